// What keywatch's process needs set before it starts, which it cannot set for itself once running: read by
// bin/keywatch.js when it starts keywatch on the bundled Node, by the test helpers, and copied into the Dockerfile.
//
// glibc's malloc gives every free block of 32 MiB or more back to the kernel and maps fresh pages for the next one.
// kafkajs joins each fetch response (12 MiB at our settings) into a new buffer, and insert bodies are as large, so
// ingest allocates a few hundred MB a second of such blocks. Fresh pages are slow wherever the host takes back
// freed memory (a VM with free page reporting: 0.3-0.7 GB/s here against 9 GB/s for memory reused). These keep
// blocks below 64 MiB in malloc's heap for reuse, keep the heap's free top, and back it with transparent huge pages
// (glibc >= 2.35; older ones ignore what they do not know). bench:ingest: +29% events/s in alternate runs with
// the heap never trimmed; trimmed above 256 MiB since, to bound memory, at the same rates within their noise (README).
export const MALLOC_TUNABLES = 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456'

// V8 grows the young generation with the allocation rate, to 64 MiB semi-spaces under ingest: at bench:ingest's
// peak the new space held 134 MB for 2 MB of live objects. Capped at 16 MiB (a new space of 48 MB at most), the
// peak RSS of the same run fell by 90-110 MB (1,169 -> 1,059 MiB at large inserts; 1,021 -> 903-935 by default)
// at the same events/s and GC share (README). Objects that outlive a scavenge or two are promoted either way: an
// event waits for its insert for longer than any young generation keeps it.
//
// kafkajs 2.2.4 schedules a timer with a negative delay on every connection (tulios/kafkajs#1751, unfixed upstream);
// Node >= 23 prints a TimeoutNegativeWarning for it, which an operator would take for a fault. Node clamps the
// delay to 1 ms either way, so the warning is silenced.
export const NODE_FLAGS = '--max-semi-space-size=16 --disable-warning=TimeoutNegativeWarning'

/**
 * The environment to start keywatch with: on Linux the malloc tunables, and everywhere the V8 flags in NODE_OPTIONS,
 * each unless the operator set their own.
 */
export function runtimeEnv(env) {
  const withMalloc = process.platform === 'linux' && env.GLIBC_TUNABLES === undefined ? { ...env, GLIBC_TUNABLES: MALLOC_TUNABLES } : env
  const options = env.NODE_OPTIONS ?? ''
  return options.includes('--max-semi-space-size') ? withMalloc : { ...withMalloc, NODE_OPTIONS: `${options} ${NODE_FLAGS}`.trim() }
}
