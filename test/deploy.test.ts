// Deploy: every refusal has its code and stores nothing; --update replaces.
import { readFile } from "node:fs/promises";
import { expect, it } from "vitest";
import { createDb } from "../src/db/database.js";
import { updateFunction } from "../src/db/functions.js";
import { deployFunction, MAX_WASM_BYTES } from "../src/deploy.js";
import { PgfnError } from "../src/errors.js";
import { HTTP_STATUS } from "../src/http/errors.js";
import { exampleWasm } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("deploy");

async function refusal(promise: Promise<unknown>): Promise<PgfnError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PgfnError);
  return error as PgfnError;
}

async function names(): Promise<string[]> {
  const { rows } = await t.pool.query(`select name from pgfn.functions order by name`);
  return rows.map((r) => r.name);
}

it("refuses each kind of bad deploy with its code, storing nothing", async () => {
  const db = createDb(t.pool);
  const echo = await readFile(exampleWasm("echo"));

  const tooBig = await refusal(
    deployFunction(db, { name: "big", wasm: new Uint8Array(MAX_WASM_BYTES + 1) }),
  );
  expect(tooBig).toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
  expect(HTTP_STATUS[tooBig.code]).toBe(413);
  expect(tooBig.message).toBe(
    `The module for "big" is ${MAX_WASM_BYTES + 1} bytes; the limit is ${MAX_WASM_BYTES} bytes (10 MiB).`,
  );

  const badName = await refusal(deployFunction(db, { name: "Send Email", wasm: echo }));
  expect(badName).toMatchObject({ code: "INVALID_REQUEST" });
  expect(HTTP_STATUS[badName.code]).toBe(400);
  expect(badName.message).toMatch(/^Invalid function name "Send Email"/);

  const junk = await refusal(
    deployFunction(db, { name: "junk", wasm: new TextEncoder().encode("nope") }),
  );
  expect(junk).toMatchObject({ code: "INVALID_REQUEST" });
  expect(HTTP_STATUS[junk.code]).toBe(400);
  expect(junk.message).toMatch(
    /^Invalid WebAssembly for "junk": The bytes are not a valid WebAssembly module/,
  );

  const empty = await refusal(deployFunction(db, { name: "empty", wasm: new Uint8Array(0) }));
  expect(empty.message).toBe(
    'Invalid WebAssembly for "empty": The module is empty (0 bytes); upload the .wasm file the compiler wrote.',
  );

  const limits = await refusal(
    deployFunction(db, { name: "limits", wasm: echo, memoryLimitMb: 1024, maxAttempts: 0 }),
  );
  expect(limits.code).toBe("INVALID_REQUEST");
  expect(limits.message).toMatch(/memoryLimitMb/);
  expect(limits.message).toMatch(/maxAttempts/);

  expect(await names()).toEqual([]);
});

it("refuses a second deploy of a name with CONFLICT unless updating, which replaces the module", async () => {
  const db = createDb(t.pool);
  const first = await deployFunction(db, {
    name: "greeter",
    wasm: await readFile(exampleWasm("echo")),
    timeoutMs: 2000,
  });
  expect(first.created).toBe(true);

  const conflict = await refusal(
    deployFunction(db, { name: "greeter", wasm: await readFile(exampleWasm("demo")) }),
  );
  expect(conflict).toMatchObject({ code: "CONFLICT" });
  expect(HTTP_STATUS[conflict.code]).toBe(409);

  const second = await deployFunction(db, {
    name: "greeter",
    wasm: await readFile(exampleWasm("demo")),
    update: true,
  });
  expect(second.created).toBe(false);
  expect(second.wasmSha256).not.toBe(first.wasmSha256);
  const { rows } = await t.pool.query(
    `select wasm_sha256, timeout_ms from pgfn.functions where name = 'greeter'`,
  );
  // Settings not given on update keep their values.
  expect(rows).toEqual([{ wasm_sha256: second.wasmSha256, timeout_ms: 2000 }]);
});

it("refuses a retry cap below the retry base in the settings' names, on deploy and on update against the stored base", async () => {
  const db = createDb(t.pool);
  const wasm = await readFile(exampleWasm("echo"));
  const bounds =
    /^Function "capped": retry_max_ms must be at least retry_base_ms, the first retry's delay \(flags --retry-max-ms, --retry-base-ms\)\.$/;
  const deploy = await refusal(
    deployFunction(db, { name: "capped", wasm, retryBaseMs: 5000, retryMaxMs: 1000 }),
  );
  expect(deploy).toMatchObject({ code: "INVALID_REQUEST" });
  expect(deploy.message).toMatch(bounds);
  expect(await names()).toEqual(["greeter"]);

  await deployFunction(db, { name: "capped", wasm, retryBaseMs: 5000 });
  const patch = await refusal(updateFunction(db, "capped", { retryMaxMs: 1000 }));
  expect(patch).toMatchObject({ code: "INVALID_REQUEST" });
  expect(patch.message).toMatch(bounds);
});
