// pgfn's host functions, as the handler imports them (Extism's user namespace).
// Kept apart because prettier cannot parse AssemblyScript's @external.
@external("extism:host/user", "pgfn_db_query")
export declare function pgfn_db_query(offset: u64): u64;

@external("extism:host/user", "pgfn_http_fetch")
export declare function pgfn_http_fetch(offset: u64): u64;

@external("extism:host/user", "pgfn_retry_after")
export declare function pgfn_retry_after(ms: i64): void;

@external("extism:host/user", "pgfn_no_retry")
export declare function pgfn_no_retry(): void;
