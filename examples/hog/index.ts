// Allocates memory: {"mb": N} in 1 MB pieces, or {"mb": N, "once": true} in
// one piece. Used to test the memory limit (MEMORY_EXCEEDED).
import { input, numberField, output } from "../lib/pgfn";

const kept = new Array<ArrayBuffer>();

export function handle(): i32 {
  const event = input();
  const mbText = numberField(event, "mb");
  const mb = mbText !== null ? I32.parseInt(mbText) : 0;
  if (event.indexOf('"once":true') >= 0) {
    kept.push(new ArrayBuffer(mb << 20));
  } else {
    for (let i = 0; i < mb; i++) kept.push(new ArrayBuffer(1 << 20));
  }
  output('{"allocated_mb":' + mb.toString() + "}");
  return 0;
}
