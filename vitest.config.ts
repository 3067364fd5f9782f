import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'detectors/**/*.test.ts'],
    // One process per test file: the embedded engine allows one data directory per process.
    pool: 'forks',
    // 2 cores: a real broker, the engine and the tests share them.
    maxWorkers: 2,
    globalSetup: ['test/global-setup.ts'],
    // Tests with a real broker, processes and Chromium take 20-40 s on a quiet 2-core machine; twice that when it is busy.
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
})
