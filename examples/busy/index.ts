// Works for a while: {"payload":{"millions":N}} loops N million times, then
// succeeds. Used to hold a run open (concurrency tests).
import { input, numberField, output } from "../lib/pgfn";

let acc: u64 = 0;

export function handle(): i32 {
  const text = numberField(input(), "millions");
  const n: u64 = (text !== null ? U64.parseInt(text) : 10) * 1_000_000;
  for (let i: u64 = 0; i < n; i++) acc = acc * 31 + i;
  output('{"done":true,"acc":' + (acc & 0xffff).toString() + "}");
  return 0;
}
