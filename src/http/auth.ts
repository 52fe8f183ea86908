/**
 * Bearer-token authentication. Tokens come from the configuration:
 * PGFN_ADMIN_TOKEN may do everything, each of PGFN_INVOKE_TOKENS may only
 * invoke. Without an admin token nothing can deploy or manage (never open).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { PgfnError } from "../errors.js";

/** What a route needs: `admin` (deploy, manage), `invoke`, or nothing. */
export type Scope = "admin" | "invoke" | "public";

export interface Authenticator {
  /**
   * Throws PgfnError UNAUTHORIZED (401) or FORBIDDEN (403) unless the header
   * grants `scope`; returns what it grants: `admin` for PGFN_ADMIN_TOKEN,
   * `invoke` for one of PGFN_INVOKE_TOKENS, `public` on a public route.
   */
  check(authorization: string | undefined, scope: Scope): Scope;
}

export interface AuthOptions {
  readonly adminToken: string | undefined;
  readonly invokeTokens: readonly string[];
}

// Comparing digests makes every comparison the same length, so
// timingSafeEqual applies and the token's length does not leak either.
const digest = (token: string) => createHash("sha256").update(token, "utf8").digest();

/** Every configured token is compared, match or not, so timing says nothing about which one matched. */
function matchesAny(candidate: Buffer, tokens: readonly Buffer[]): boolean {
  let match = false;
  for (const token of tokens) match = timingSafeEqual(candidate, token) || match;
  return match;
}

export function createAuthenticator(options: AuthOptions): Authenticator {
  const admin = options.adminToken ? [digest(options.adminToken)] : [];
  const invoke = options.invokeTokens.map(digest);
  return {
    check(authorization, scope) {
      if (scope === "public") return "public";
      const token = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "")?.[1];
      if (token === undefined) {
        throw new PgfnError(
          "UNAUTHORIZED",
          admin.length === 0 && (scope === "admin" || invoke.length === 0)
            ? "This pgfn has no PGFN_ADMIN_TOKEN configured, so the functions API refuses this request; set PGFN_ADMIN_TOKEN (16+ characters) and restart."
            : 'Send "Authorization: Bearer <token>" with PGFN_ADMIN_TOKEN or, to invoke, one of PGFN_INVOKE_TOKENS.',
        );
      }
      const candidate = digest(token);
      const isAdmin = matchesAny(candidate, admin);
      const isInvoker = matchesAny(candidate, invoke);
      if (isAdmin) return "admin";
      if (scope === "invoke" && isInvoker) return "invoke";
      if (isInvoker) {
        throw new PgfnError(
          "FORBIDDEN",
          "This token may only invoke functions; deploying and managing them needs PGFN_ADMIN_TOKEN.",
        );
      }
      throw new PgfnError(
        "UNAUTHORIZED",
        admin.length === 0
          ? "This pgfn has no PGFN_ADMIN_TOKEN configured and the token is not one of PGFN_INVOKE_TOKENS; the request is refused."
          : "The bearer token is not PGFN_ADMIN_TOKEN nor one of PGFN_INVOKE_TOKENS.",
      );
    },
  };
}
