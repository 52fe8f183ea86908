// Returns how many times this instance was called: always 1, since every
// invocation gets a fresh instance.
import { output } from "../../assemblyscript";

let calls: i32 = 0;

export function handle(): i32 {
  calls += 1;
  output('{"calls":' + calls.toString() + "}");
  return 0;
}
