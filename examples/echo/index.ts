// Returns its input unchanged, byte for byte: the event pgfn sent. Used by the
// tests and benchmarks, so it does no more work than a call must.
import { Host } from "@extism/as-pdk";
// For pgfnAbort, which build.js makes AssemblyScript's abort.
import "../../assemblyscript";

export function handle(): i32 {
  Host.output(Host.input());
  return 0;
}

// The same, under another name: a module's entrypoint other than `handle`
// (pgfn.functions.entrypoint), for the tests of that setting.
export function echo(): i32 {
  return handle();
}
