// Fetches the request in the payload ({"payload":{"url":"...","method":"GET"}})
// with http_fetch and returns the host's reply; fails when the fetch fails,
// so the run shows HOST_FUNCTION_ERROR.
import { fail, httpFetch, input, output, replyOk } from "../lib/pgfn";

export function handle(): i32 {
  const event = input();
  const at = event.indexOf('"payload":');
  if (at < 0) return fail("expected a payload");
  // pgfn puts the payload last in a manual event: the rest is the request.
  const request = event.substring(at + 10, event.length - 1);
  const reply = httpFetch(request);
  if (!replyOk(reply)) return fail("fetch refused: " + reply);
  output(reply);
  return 0;
}
