// Runs Binaryen for memoryGuard.ts in a thread of its own, as plain
// JavaScript: Binaryen is 15 MB of JavaScript that a TypeScript loader
// (tsx, in tests and scripts) would otherwise transform on every start, and
// it stays off the daemon's main thread and heap.
import { parentPort } from "node:worker_threads";

let binaryen;

parentPort.on("message", async ({ id, wasm, memoryExport, initialPagesSection }) => {
  let module;
  try {
    binaryen ??= (await import("binaryen")).default;
    module = binaryen.readBinary(wasm);
    // What V8 in Node 20 runs; Binaryen must not emit anything newer.
    const F = binaryen.Features;
    module.setFeatures(
      F.MVP |
        F.MutableGlobals |
        F.NontrappingFPToInt |
        F.SIMD128 |
        F.BulkMemory |
        F.SignExt |
        F.ReferenceTypes |
        F.Multivalue |
        F.TailCall,
    );
    if (!module.hasMemory()) {
      parentPort.postMessage({ id, wasm });
      return;
    }
    // The pass argument is global to Binaryen: set it right before the run.
    binaryen.setPassArgument("instrument-memory", "memory.grow");
    module.runPasses(["instrument-memory"]);
    const info = module.getMemoryInfo();
    if (!info.module) module.addMemoryExport("0", memoryExport);
    // The memory's initial pages, u32 little-endian: the sandbox refuses a
    // module that starts past its limit before instantiating it, and knows
    // the size while start-up code runs, before the memory can be read.
    const initial = new Uint8Array(4);
    new DataView(initial.buffer).setUint32(0, info.initial, true);
    module.addCustomSection(initialPagesSection, initial);
    const out = module.emitBinary();
    parentPort.postMessage({ id, wasm: out }, [out.buffer]);
  } catch (error) {
    // Binaryen reports a module it cannot read with a non-Error throw.
    const detail = error instanceof Error ? error.message : typeof error === "string" ? error : "";
    parentPort.postMessage({
      id,
      error: `Binaryen cannot read the module${detail ? `: ${detail}` : ""}`,
    });
  } finally {
    module?.dispose();
  }
});
