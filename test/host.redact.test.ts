// Secret redaction of handler logs and errors: which env values count as
// secrets, and how they are replaced.
import { describe, expect, it } from "vitest";
import { redact, SECRET_KEY, secretValues } from "../src/sandbox/host/redact.js";

describe("secretValues", () => {
  it("takes the values of secret-looking keys, in any case", () => {
    const env = {
      API_KEY: "key-value-1",
      stripe_secret: "secret-value",
      DB_PASSWORD: "hunter22",
      PASSWD: "passwd-1",
      GITHUB_TOKEN: "ghp_abcdef",
      AWS_CREDENTIALS: "cred-value",
      PRIVATE_PEM: "pem-value",
      REGION: "eu-west-1",
      LOG_LEVEL: "debug",
    };
    expect(secretValues(env).sort()).toEqual(
      [
        "key-value-1",
        "secret-value",
        "hunter22",
        "passwd-1",
        "ghp_abcdef",
        "cred-value",
        "pem-value",
      ].sort(),
    );
  });

  it("orders longest first, ignores values under 4 characters and duplicates", () => {
    expect(secretValues({ A_KEY: "abcd", B_KEY: "abcdefgh", C_KEY: "abc", D_KEY: "abcd" })).toEqual(
      ["abcdefgh", "abcd"],
    );
  });

  it("also lists the JSON-escaped form of a value JSON would escape", () => {
    expect(secretValues({ TOKEN: 'pa"ss\\word' })).toEqual(['pa\\"ss\\\\word', 'pa"ss\\word']);
  });

  it("SECRET_KEY matches anywhere in the key", () => {
    expect(SECRET_KEY.test("my_api_key_v2")).toBe(true);
    expect(SECRET_KEY.test("HOSTNAME")).toBe(false);
  });
});

describe("redact", () => {
  it("replaces every occurrence of every secret", () => {
    expect(redact("a sk-123 b sk-123 c hunter2x", ["sk-123", "hunter2x"])).toBe(
      "a [redacted] b [redacted] c [redacted]",
    );
  });

  it("replaces a secret containing another one whole", () => {
    expect(redact("x=abcdefgh y=abcd", ["abcd", "abcdefgh"])).toBe("x=[redacted] y=[redacted]");
  });

  it("does not redact inside an earlier replacement", () => {
    expect(redact("secret-1 and more", ["secret-1", "dact"])).toBe("[redacted] and more");
  });

  it("treats secrets literally, not as patterns", () => {
    expect(redact("cost $1.50 (a+b) a.b", ["$1.50", "(a+b)"])).toBe(
      "cost [redacted] [redacted] a.b",
    );
  });

  it("leaves text alone without secrets, and ignores empty ones", () => {
    expect(redact("nothing here", [])).toBe("nothing here");
    expect(redact("nothing here", [""])).toBe("nothing here");
  });

  it("redacts a value inside JSON by its escaped form", () => {
    const secrets = secretValues({ TOKEN: 'pa"ssword' });
    expect(redact(JSON.stringify({ token: 'pa"ssword' }), secrets)).toBe('{"token":"[redacted]"}');
  });
});
