/**
 * Secret redaction for everything a handler can make us print: its log lines
 * and its error messages may contain values it read with `env(key)`.
 */

/**
 * Env keys whose values are treated as secrets (matched anywhere in the key,
 * any case). Broad on purpose: a harmless value redacted costs a less
 * readable log line, a secret missed is a leak. PASS covers PASSWORD, PASSWD,
 * *_PASS and PASSPHRASE; AUTH covers AUTHORIZATION and OAUTH; SIGN covers
 * SIGNATURE and SIGNING; URL, URI and DSN because connection strings
 * (DATABASE_URL, REDIS_URL, SENTRY_DSN) carry a password. PW, PAT and SK
 * only as a whole word of the key (SMTP_PW, GITHUB_PAT, STRIPE_SK), so that
 * PATH or SKU stay readable.
 */
export const SECRET_KEY =
  /(KEY|SECRET|PASS|PWD|TOKEN|CREDENTIAL|PRIVATE|AUTH|COOKIE|SESSION|SIGN|CERT|SALT|DSN|URL|URI|JWT|HMAC|BEARER)|(^|_)(PW|PAT|SK)(_|$)/i;

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
  return text.replace(new RegExp(pattern, "g"), REDACTED);
}

/** What a secret is replaced with. */
export const REDACTED = "[redacted]";

/**
 * `text` redacted (see {@link redact}), then cut to `max` characters with
 * "…" appended when it was longer. In this order: cutting first would leave
 * the first characters of a secret that straddles the cut, which then no
 * longer matches. Only a prefix of a huge text is redacted, one long enough
 * that whatever survives the cut was redacted whole: to fill `max`
 * characters, redaction can consume at most max + (max / 10) * longest
 * characters of the input, since every replacement writes 10.
 *
 * @example
 * redactAndClip("key=sk-123456", ["sk-123456"], 8) // "key=[red…"
 */
export function redactAndClip(text: string, secrets: readonly string[], max: number): string {
  const redacted =
    secrets.length === 0 ? text : redact(text.slice(0, redactionWindow(secrets, max)), secrets);
  return clip(redacted, max);
}

/**
 * How many characters of a text {@link redactAndClip} reads to fill `max`:
 * a caller that copies a huge text from elsewhere need copy no more.
 *
 * @example
 * redactionWindow([], 4000) // 8000
 */
export function redactionWindow(secrets: readonly string[], max: number): number {
  const longest = secrets.reduce((n, s) => Math.max(n, s.length), 0);
  return max + Math.ceil(max / REDACTED.length) * Math.max(longest, REDACTED.length) + longest;
}

/**
 * `text` cut to `max` characters, "…" appended when it was longer. A cut never
 * splits a surrogate pair (half of one is a character Postgres cannot store).
 */
export function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  const code = text.charCodeAt(max - 1);
  const end = code >= 0xd800 && code <= 0xdbff ? max - 1 : max;
  return `${text.slice(0, end)}…`;
}
