// The failure spec's example: a handler whose email service is down. It asks
// for a retry until its third attempt, then succeeds; with {"payload":
// {"permanent":true}} it fails for good instead (no retry).
import { failForGood, input, numberField, output, retryLater } from "../lib/pgfn";

export function handle(): i32 {
  const event = input();
  if (event.indexOf('"permanent":true') >= 0)
    return failForGood("invalid address: will never work");
  const attemptText = numberField(event, "attempt");
  const attempt = attemptText !== null ? I32.parseInt(attemptText) : 1;
  if (attempt < 3) return retryLater("Email service down", 0);
  output('{"sent":true,"attempt":' + attempt.toString() + "}");
  return 0;
}
