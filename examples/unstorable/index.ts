// Writes what Postgres cannot store, chosen by the payload's "mode": an
// output with a \u0000 escape ("output_nul"), one with a lone surrogate
// ("output_surrogate"), or a log line with a NUL byte ("log_nul", then a
// normal output). For the tests: pgfn must record each run, never fail to.
import { event, logInfo, output } from "../../assemblyscript";

export function handle(): i32 {
  const e = event();
  const found = e.getObject("payload");
  // Sandbox tests may pass the payload alone, without an event around it.
  const mode = (found !== null ? found : e).getString("mode");
  if (mode == "output_nul") {
    output('{"text":"a\\u0000b"}');
  } else if (mode == "output_surrogate") {
    output('{"text":"x\\ud800y"}');
  } else {
    logInfo("before" + String.fromCharCode(0) + "after");
    output('{"ok":true}');
  }
  return 0;
}
