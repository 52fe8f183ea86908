// Configuration from the environment: a bad value is refused at start-up
// with a message naming the variable, never printing a secret.
import { describe, expect, it } from "vitest";
import { CONFIG_VARIABLES, loadConfig } from "../src/config.js";

const LONG = "inv-0123456789abcdef";

describe("bearer tokens", () => {
  it("PGFN_INVOKE_TOKENS refuses a token under 16 characters, by position, without printing it", () => {
    expect(() => loadConfig({ PGFN_INVOKE_TOKENS: "abcd" })).toThrow(
      /PGFN_INVOKE_TOKENS token 1 of the comma-separated list has 4 characters; each token must be at least 16 characters/,
    );
    let message = "";
    try {
      loadConfig({ PGFN_INVOKE_TOKENS: `${LONG}, s3cr` });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/PGFN_INVOKE_TOKENS token 2 of the comma-separated list has 4/);
    expect(message).not.toContain("s3cr");
    expect(message).not.toContain(LONG);
  });

  it("PGFN_INVOKE_TOKENS refuses a token with whitespace inside, which no Authorization header can carry", () => {
    expect(() => loadConfig({ PGFN_INVOKE_TOKENS: "inv 0123456789abcdef" })).toThrow(
      /PGFN_INVOKE_TOKENS token 1 of the comma-separated list contains whitespace/,
    );
  });

  it("PGFN_INVOKE_TOKENS takes long tokens, spaces around commas ignored", () => {
    const config = loadConfig({ PGFN_INVOKE_TOKENS: ` ${LONG} ,${LONG}-2,` });
    expect(config.invokeTokens).toEqual([LONG, `${LONG}-2`]);
  });

  it("PGFN_ADMIN_TOKEN refuses one under 16 characters", () => {
    expect(() => loadConfig({ PGFN_ADMIN_TOKEN: "short" })).toThrow(
      /PGFN_ADMIN_TOKEN must be at least 16 characters/,
    );
  });
});

/** zod's words, which no message may show. */
const LIBRARY_WORDS = /Invalid input|expected \w+, received|Too (small|big)|Invalid option|NaN/;

function refusal(env: NodeJS.ProcessEnv): string {
  try {
    loadConfig(env);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error(`accepted ${JSON.stringify(env)}`);
}

describe("a bad value is refused by the variable's name, in the user's terms", () => {
  it("a number says its range and quotes what was set", () => {
    expect(refusal({ PGFN_HTTP_PORT: "abc" })).toBe(
      'Invalid configuration: PGFN_HTTP_PORT must be a whole number between 0 and 65535 (got "abc").',
    );
    for (const value of ["70000", "-1", "80.5", "0x50"]) {
      expect(refusal({ PGFN_HTTP_PORT: value })).toBe(
        `Invalid configuration: PGFN_HTTP_PORT must be a whole number between 0 and 65535 (got "${value}").`,
      );
    }
    expect(loadConfig({ PGFN_HTTP_PORT: " 8080 " }).httpPort).toBe(8080);
    expect(refusal({ PGFN_WORKER_CONCURRENCY: "lots", PGFN_LOG_LEVEL: "verbose" })).toBe(
      'Invalid configuration: PGFN_WORKER_CONCURRENCY must be a whole number between 1 and 1000 (got "lots"); PGFN_LOG_LEVEL must be one of trace, debug, info, warn, error, fatal, silent (got "verbose").',
    );
  });

  it("a switch says the words it takes", () => {
    expect(refusal({ PGFN_LISTENER: "maybe" })).toBe(
      'Invalid configuration: PGFN_LISTENER must be true or false (or 1/0, yes/no, on/off) (got "maybe").',
    );
  });

  it("a URL or a token is never quoted", () => {
    const message = refusal({ DATABASE_URL: "mysql://app:hunter22@db/app" });
    expect(message).toBe(
      "Invalid configuration: DATABASE_URL must be a postgres:// or postgresql:// URL.",
    );
    expect(refusal({ PGFN_DB_QUERY_URL: "hunter22" })).not.toContain("hunter22");
    expect(refusal({ PGFN_ADMIN_TOKEN: "hunter22" })).not.toContain("hunter22");
  });

  it("every variable: its own name first, then what it must be, and no validation library's words", () => {
    const accepted: string[] = [];
    for (const variable of CONFIG_VARIABLES) {
      let message: string;
      try {
        loadConfig({ [variable]: "not valid!" });
        accepted.push(variable);
        continue;
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message, variable).toMatch(
        new RegExp(`^Invalid configuration: ${variable} (must|token) `),
      );
      expect(message, variable).not.toMatch(LIBRARY_WORDS);
    }
    // Any text is an interface name to try.
    expect(accepted).toEqual(["PGFN_HTTP_HOST"]);
  });
});
