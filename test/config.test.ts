// Configuration from the environment: a bad value is refused at start-up
// with a message naming the variable, never printing a secret.
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";

const LONG = "inv-0123456789abcdef";

describe("bearer tokens", () => {
  it("PGFN_INVOKE_TOKENS refuses a token under 16 characters, by position, without printing it", () => {
    expect(() => loadConfig({ PGFN_INVOKE_TOKENS: "abcd" })).toThrow(
      /PGFN_INVOKE_TOKENS: token 1 of the comma-separated list has 4 characters; each token must be at least 16 characters/,
    );
    let message = "";
    try {
      loadConfig({ PGFN_INVOKE_TOKENS: `${LONG}, s3cr` });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/PGFN_INVOKE_TOKENS: token 2 of the comma-separated list has 4/);
    expect(message).not.toContain("s3cr");
    expect(message).not.toContain(LONG);
  });

  it("PGFN_INVOKE_TOKENS refuses a token with whitespace inside, which no Authorization header can carry", () => {
    expect(() => loadConfig({ PGFN_INVOKE_TOKENS: "inv 0123456789abcdef" })).toThrow(
      /PGFN_INVOKE_TOKENS: token 1 of the comma-separated list contains whitespace/,
    );
  });

  it("PGFN_INVOKE_TOKENS takes long tokens, spaces around commas ignored", () => {
    const config = loadConfig({ PGFN_INVOKE_TOKENS: ` ${LONG} ,${LONG}-2,` });
    expect(config.invokeTokens).toEqual([LONG, `${LONG}-2`]);
  });

  it("PGFN_ADMIN_TOKEN refuses one under 16 characters", () => {
    expect(() => loadConfig({ PGFN_ADMIN_TOKEN: "short" })).toThrow(
      /PGFN_ADMIN_TOKEN: must be at least 16 characters/,
    );
  });
});
