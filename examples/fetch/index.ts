// Fetches the request in the payload ({"payload":{"url":"...","method":"GET"}})
// with http_fetch and returns the host's reply; fails when the fetch fails,
// so the run shows HOST_FUNCTION_ERROR.
import { event, fail, httpFetch, output, replyOk } from "../../assemblyscript";

export function handle(): i32 {
  const request = event().getObject("payload");
  if (request === null) return fail("expected a payload");
  const reply = httpFetch(request.toString());
  if (!replyOk(reply)) return fail("fetch refused: " + reply);
  output(reply);
  return 0;
}
