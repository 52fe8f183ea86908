// Works for a while: {"payload":{"millions":N}} loops N million times, then
// succeeds. Used to hold a run open (concurrency tests).
import { event, output } from "../../assemblyscript";

let acc: u64 = 0;

export function handle(): i32 {
  const e = event();
  const payload = e.getObject("payload");
  // Sandbox tests may pass the payload alone, without an event around it.
  const millions = (payload !== null ? payload : e).getNumber("millions", 10);
  const n: u64 = <u64>millions * 1_000_000;
  for (let i: u64 = 0; i < n; i++) acc = acc * 31 + i;
  output('{"done":true,"acc":' + (acc & 0xffff).toString() + "}");
  return 0;
}
