// What a log line may not carry: tokens, passwords, a function's env.
import { Writable } from "node:stream";
import { expect, it } from "vitest";
import { createLogger } from "../src/logger.js";

/** The JSON lines a logger writes for `log(logger)`. */
function linesOf(log: (logger: ReturnType<typeof createLogger>) => void): unknown[] {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString("utf8"));
      done();
    },
  });
  log(createLogger({ destination }));
  return chunks
    .join("")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as unknown);
}

it("redacts tokens, passwords, authorization headers and env, at the top and one level down", () => {
  const [line] = linesOf((logger) =>
    logger.info(
      {
        operation: "http",
        function: "mailer",
        token: "tok-123456",
        password: "hunter22",
        authorization: "Bearer tok-123456",
        env: { API_KEY: "sk-123456" },
        request: { token: "tok-abcdef", env: { SECRET: "s-123456" }, method: "POST" },
      },
      "request",
    ),
  );
  expect(line).toMatchObject({
    level: "info",
    service: "pgfn",
    operation: "http",
    function: "mailer",
    token: "[redacted]",
    password: "[redacted]",
    authorization: "[redacted]",
    env: "[redacted]",
    request: { token: "[redacted]", env: "[redacted]", method: "POST" },
    msg: "request",
  });
  const text = JSON.stringify(line);
  for (const secret of ["tok-123456", "hunter22", "sk-123456", "tok-abcdef", "s-123456"]) {
    expect(text).not.toContain(secret);
  }
});
