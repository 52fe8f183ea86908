// Runs the SQL in the payload ({"payload":{"sql":"...","params":[...]}}) with
// db_query and returns the host's reply; fails when the query fails, so the
// run shows HOST_FUNCTION_ERROR.
import { dbQuery, event, fail, output, replyOk } from "../../assemblyscript";

export function handle(): i32 {
  const e = event();
  const found = e.getObject("payload");
  // Sandbox tests may pass the payload alone, without an event around it.
  const payload = found !== null ? found : e;
  const sql = payload.getString("sql");
  if (sql === null) return fail("expected payload.sql");
  const params = payload.getArray("params");
  const reply = dbQuery(sql, params !== null ? params.toString() : "[]");
  if (!replyOk(reply)) return fail("query refused: " + reply);
  output(reply);
  return 0;
}
