// Never returns: used to test the timeout (TIMEOUT, the instance killed).
import "../../assemblyscript";

let spins: i64 = 0;

export function handle(): i32 {
  while (true) {
    spins++;
  }
  return 0;
}
