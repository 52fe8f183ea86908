// Careless with secrets on purpose: logs its API_KEY and fails with it in the
// message. pgfn must redact both.
import { env, fail, logInfo } from "../lib/pgfn";

export function handle(): i32 {
  const key = env("API_KEY");
  const region = env("REGION");
  logInfo("using key " + (key !== null ? key : "none") + " in " + (region !== null ? region : "?"));
  return fail("upstream rejected key " + (key !== null ? key : "none"));
}
