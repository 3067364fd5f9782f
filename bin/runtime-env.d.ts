export declare const MALLOC_TUNABLES: string
export declare const NODE_FLAGS: string
export declare function runtimeEnv<T extends Record<string, string | undefined>>(env: T): T & { GLIBC_TUNABLES?: string; NODE_OPTIONS?: string }
