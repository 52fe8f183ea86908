/**
 * Secret redaction for everything a handler can make us print: its log lines
 * and its error messages may contain values it read with `env(key)`.
 */

/** Env keys whose values are treated as secrets (matched anywhere in the key, any case). */
export const SECRET_KEY = /(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE)/i;

/**
 * Values shorter than this are not redacted: replacing every "on" or "123" in
 * every log line would destroy the logs while protecting nothing.
 */
const MIN_SECRET_LENGTH = 4;

/**
 * The values of the secret-looking keys of `env`, deduplicated and longest
 * first (so a secret that contains another is replaced whole), ignoring values
 * shorter than 4 characters. A value that JSON would escape (quotes,
 * backslashes, newlines) is also listed in its escaped form, because log lines
 * and error messages often carry it inside JSON.
 *
 * @example
 * secretValues({ API_KEY: "sk-123456", REGION: "eu" }) // ["sk-123456"]
 */
export function secretValues(env: Record<string, string>): string[] {
  const values = new Set<string>();
  for (const [key, value] of Object.entries(env)) {
    if (!SECRET_KEY.test(key) || value.length < MIN_SECRET_LENGTH) continue;
    values.add(value);
    const escaped = JSON.stringify(value).slice(1, -1);
    if (escaped !== value) values.add(escaped);
  }
  return [...values].sort((a, b) => b.length - a.length);
}

/**
 * `text` with every occurrence of every secret replaced by "[redacted]".
 * One pass over the text with the longest secret tried first, so a shorter
 * secret never matches inside a longer one or inside an earlier "[redacted]".
 *
 * @example
 * redact("token=sk-123456", ["sk-123456"]) // "token=[redacted]"
 */
export function redact(text: string, secrets: readonly string[]): string {
  const usable = secrets.filter((s) => s.length > 0);
  if (usable.length === 0 || text.length === 0) return text;
  const pattern = [...usable]
    .sort((a, b) => b.length - a.length)
    .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join("|");
  return text.replace(new RegExp(pattern, "g"), "[redacted]");
}
