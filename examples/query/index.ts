// Runs the SQL in the payload ({"payload":{"sql":"...","params":[...]}}) with
// db_query and returns the host's reply; fails when the query fails, so the
// run shows HOST_FUNCTION_ERROR.
import { dbQuery, fail, input, output, replyOk, stringField } from "../lib/pgfn";

export function handle(): i32 {
  const event = input();
  const sql = stringField(event, "sql");
  if (sql === null) return fail("expected payload.sql");
  const paramsAt = event.indexOf('"params":');
  let params = "[]";
  if (paramsAt >= 0) {
    const end = event.indexOf("]", paramsAt);
    params = event.substring(event.indexOf("[", paramsAt), end + 1);
  }
  const reply = dbQuery(sql, params);
  if (!replyOk(reply)) return fail("query refused: " + reply);
  output(reply);
  return 0;
}
