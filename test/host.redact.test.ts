// Secret redaction of handler logs and errors: which env values count as
// secrets, and how they are replaced.
import { describe, expect, it } from "vitest";
import {
  clip,
  redact,
  redactAndClip,
  SECRET_KEY,
  secretValues,
} from "../src/sandbox/host/redact.js";

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

  it("SECRET_KEY knows connection strings, *_PASS, AUTH, cookies and sessions", () => {
    const secret = [
      "DATABASE_URL",
      "REDIS_URI",
      "SENTRY_DSN",
      "SMTP_PASS",
      "DB_PASSPHRASE",
      "AUTH",
      "BASIC_AUTH",
      "AUTHORIZATION_HEADER",
      "GOOGLE_APPLICATION_CREDENTIALS",
      "PRIVATE_PEM",
      "COOKIE_SIGNING",
      "SESSION_SECRET",
      "SESSION",
      "WEBHOOK_SIGNATURE",
      "TLS_CERT",
      "PASSWORD_SALT",
      "MYSQL_PWD",
      "SMTP_PW",
      "JWT",
      "JWT_SIGNING",
      "HMAC",
      "BEARER",
      "GITHUB_PAT",
      "STRIPE_SK",
      "WEBHOOK_SIGNING",
    ];
    for (const key of secret) expect(SECRET_KEY.test(key), key).toBe(true);
    for (const key of ["REGION", "LOG_LEVEL", "SENDER", "TIMEOUT_MS", "HOSTNAME", "PATH", "SKU"]) {
      expect(SECRET_KEY.test(key), key).toBe(false);
    }
    expect(secretValues({ DATABASE_URL: "postgres://u:pw@db/app", SMTP_PASS: "hunter22" })).toEqual(
      ["postgres://u:pw@db/app", "hunter22"],
    );
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

describe("redactAndClip", () => {
  it("redacts a secret that straddles the cut, instead of keeping its first characters", () => {
    const secret = "sk-live-0123456789";
    const text = `${"x".repeat(95)}${secret} and more`;
    const out = redactAndClip(text, [secret], 100);
    expect(out).toBe(`${"x".repeat(95)}[reda…`);
    expect(out).not.toContain("sk-");
    // Cut first, as before: the secret's prefix stays.
    expect(redact(clip(text, 100), [secret])).toContain("sk-li");
  });

  it("redacts a secret longer than the cut", () => {
    const secret = `sk-${"9".repeat(300)}`;
    expect(redactAndClip(`key ${secret} end`, [secret], 100)).toBe("key [redacted] end");
  });

  it("cuts exactly as redacting the whole text would, whatever the text", () => {
    // Texts built of secrets, their fragments and filler: the window of a
    // huge text that is redacted must hold everything that survives the cut.
    const secrets = ["abcd", "s3cr3t-value-that-is-long", "k".repeat(40), 'q"uote'];
    const values = secretValues(Object.fromEntries(secrets.map((v, i) => [`KEY_${i}`, v])));
    const pieces = [...secrets, "abc", "s3cr3t-", "kkkk", "x", "yy ", "[redacted]", '\\"'];
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let n = 0; n < 300; n++) {
      const length = Math.floor(random() * 1500);
      let text = "";
      while (text.length < length) text += pieces[Math.floor(random() * pieces.length)];
      const max = 1 + Math.floor(random() * 120);
      expect(redactAndClip(text, values, max), text).toBe(clip(redact(text, values), max));
    }
  });

  it("leaves a short text without secrets alone", () => {
    expect(redactAndClip("hello", [], 100)).toBe("hello");
    expect(redactAndClip("hello", ["hunter22"], 100)).toBe("hello");
  });
});

describe("clip", () => {
  it("never splits a surrogate pair, which Postgres could not store", () => {
    expect(clip("ab\u{1F600}cd", 3)).toBe("ab…");
    expect(clip("ab\u{1F600}cd", 4)).toBe("ab\u{1F600}…");
    expect(clip("abc", 3)).toBe("abc");
  });
});
