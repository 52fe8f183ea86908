// Runs Binaryen for memoryGuard.ts in a thread of its own, as plain
// JavaScript: Binaryen is 15 MB of JavaScript that a TypeScript loader
// (tsx, in tests and scripts) would otherwise transform on every start, and
// it stays off the daemon's main thread and heap.
import { parentPort } from "node:worker_threads";

let binaryen;

/**
 * Instructions that change an instance's state outside its linear memory and
 * globals, which a kept instance could not give back: table contents and
 * size, dropped segments. A module using any of them gets a new instance per
 * invocation. Binaryen prints each instruction as "(name"; a match elsewhere
 * (a data string) only costs the module its reuse.
 */
const UNRESTORABLE = /\((?:table\.(?:set|grow|fill|copy|init)|elem\.drop|data\.drop)\b/;

/**
 * Whether UNRESTORABLE instructions can do anything in this module, so the
 * text (tens of milliseconds for a small module) is only printed when they
 * can: table instructions need a table (Extism imports none), elem.drop an
 * element segment, and data.drop changes nothing for an active segment,
 * which instantiation already dropped.
 */
function mayChangeOtherState(module) {
  if (module.getNumTables() > 0 || module.getNumElementSegments() > 0) return true;
  for (let i = 0; i < module.getNumDataSegments(); i++) {
    if (module.getDataSegmentInfo(module.getDataSegmentByIndex(i)).passive) return true;
  }
  return false;
}

const SHADOW = "__pgfn_shadow_";

/** Value types a shadow global can hold, with a zero of each. */
const ZERO = {
  i32: (m) => m.i32.const(0),
  i64: (m) => m.i64.const(0n),
  f32: (m) => m.f32.const(0),
  f64: (m) => m.f64.const(0),
  v128: (m) => m.v128.const(new Array(16).fill(0)),
};

/**
 * Adds `save` and `restore` exports: `save` copies every mutable global into
 * a shadow global of its own (added here, so no code of the module can reach
 * it), `restore` copies them back. Returns false, changing nothing, when the
 * module's state cannot be restored that way (see UNRESTORABLE) or the names
 * are taken.
 */
function addGlobalsSnapshot(module, { save, restore }) {
  const memory = module.getMemoryInfo();
  if (memory.shared || memory.is64) return false;
  if (module.getExport(save) || module.getExport(restore)) return false;
  if (module.getFunction(save) || module.getFunction(restore)) return false;
  const globals = [];
  for (let i = 0; i < module.getNumGlobals(); i++) {
    const info = binaryen.getGlobalInfo(module.getGlobalByIndex(i));
    if (info.name.startsWith(SHADOW)) return false;
    if (!info.mutable) continue;
    const type = Object.keys(ZERO).find((t) => binaryen[t] === info.type);
    if (!type) return false;
    globals.push({ name: info.name, type: info.type, zero: ZERO[type] });
  }
  if (mayChangeOtherState(module) && UNRESTORABLE.test(module.emitText())) return false;
  const saves = [];
  const restores = [];
  for (const [i, g] of globals.entries()) {
    const shadow = `${SHADOW}${i}`;
    module.addGlobal(shadow, g.type, true, g.zero(module));
    saves.push(module.global.set(shadow, module.global.get(g.name, g.type)));
    restores.push(module.global.set(g.name, module.global.get(shadow, g.type)));
  }
  const body = (list) => (list.length ? module.block(null, list) : module.nop());
  module.addFunction(save, binaryen.none, binaryen.none, [], body(saves));
  module.addFunction(restore, binaryen.none, binaryen.none, [], body(restores));
  module.addFunctionExport(save, save);
  module.addFunctionExport(restore, restore);
  return true;
}

parentPort.on("message", async ({ id, wasm, memoryExport, initialPagesSection, snapshot }) => {
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
    addGlobalsSnapshot(module, snapshot);
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
