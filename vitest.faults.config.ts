// `npm run test:faults`: the fault suite with its oracle (issue 16), at a size CI does not run. One file at a time:
// each one loads the machine on its own.
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/faults/**/*.faults.ts', 'test/cluster-leadership.test.ts'],
    pool: 'forks',
    maxWorkers: 1,
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 1_800_000,
    hookTimeout: 120_000,
  },
})
