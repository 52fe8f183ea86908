// Careless with secrets on purpose: logs its API_KEY and fails with it in the
// message. pgfn must redact both.
// With {"mode":"notjson"} it answers text that is not JSON, the key at its
// 200th character, where pgfn cuts such output for the error message.
import { env, event, fail, logInfo, output } from "../../assemblyscript";

export function handle(): i32 {
  const key = env("API_KEY");
  const region = env("REGION");
  const e = event();
  const found = e.getObject("payload");
  // Sandbox tests may pass the payload alone, without an event around it.
  const payload = found !== null ? found : e;
  if (payload.getString("mode") == "notjson") {
    output("x".repeat(195) + " " + (key !== null ? key : "none"));
    return 0;
  }
  logInfo("using key " + (key !== null ? key : "none") + " in " + (region !== null ? region : "?"));
  return fail("upstream rejected key " + (key !== null ? key : "none"));
}
