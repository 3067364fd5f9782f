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

/** The environment to start keywatch with: the malloc tunables added on Linux, unless the operator set their own. */
export function runtimeEnv(env) {
  return process.platform === 'linux' && env.GLIBC_TUNABLES === undefined ? { ...env, GLIBC_TUNABLES: MALLOC_TUNABLES } : env
}
