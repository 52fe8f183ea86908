// The failure spec's example: a handler whose email service is down. It asks
// for a retry until its third attempt, then succeeds; with {"payload":
// {"permanent":true}} it fails for good instead (no retry).
import { event, failForGood, output, retryLater } from "../../assemblyscript";

export function handle(): i32 {
  const e = event();
  const found = e.getObject("payload");
  // Sandbox tests may pass the payload alone, without an event around it.
  const payload = found !== null ? found : e;
  if (payload.getBool("permanent")) return failForGood("invalid address: will never work");
  const attempt = <i32>e.getNumber("attempt", 1);
  if (attempt < 3) return retryLater("Email service down", 0);
  output('{"sent":true,"attempt":' + attempt.toString() + "}");
  return 0;
}
