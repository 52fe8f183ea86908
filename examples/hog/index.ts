// Allocates memory: {"mb": N} in 1 MB pieces, or {"mb": N, "once": true} in
// one piece. Used to test the memory limit (MEMORY_EXCEEDED).
import { event, output } from "../../assemblyscript";

const kept = new Array<ArrayBuffer>();

export function handle(): i32 {
  const e = event();
  const found = e.getObject("payload");
  // Sandbox tests may pass the payload alone, without an event around it.
  const payload = found !== null ? found : e;
  const mb = <i32>payload.getNumber("mb", 0);
  if (payload.getBool("once")) {
    kept.push(new ArrayBuffer(mb << 20));
  } else {
    for (let i = 0; i < mb; i++) kept.push(new ArrayBuffer(1 << 20));
  }
  output('{"allocated_mb":' + mb.toString() + "}");
  return 0;
}
