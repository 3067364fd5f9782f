// The key inventory tells the lifecycle's truth, in the API a user reads: a rollback deletes the replacement key
// and gives the kept key back a life without a deadline; a key past its expires_at or its grace deadline is expired
// even before the platform's expired event; each key shows its scopes and, while rotating, its grace deadline.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApi } from '../api/server.ts'
import { apiDepsOf, type Runtime } from '../app/runtime.ts'
import { after, ago, lifecycle } from '../detectors/fixtures/events.ts'
import { bearer, openTestRuntime } from './helpers.ts'

let rt: Runtime
let api: FastifyInstance
let headers: { authorization: string }
const now = new Date().toISOString()
const key = (name: string, key_kind: 'secret' | 'restricted' = 'secret') => ({ account_id: 'acct_InvTruth01', key_id: `key_${name}`, key_kind, mode: 'live' as const })
const kept = key('InvKept01')
const deadline = after(now, { days: 3 })

beforeAll(async () => {
  rt = await openTestRuntime()
  const events = [
    // rotated, then rolled back: the replacement is deleted, the kept key active with no deadline
    lifecycle(kept, 'created', ago(now, { days: 40 })),
    lifecycle(kept, 'rotated', ago(now, { hours: 3 }), { replacement_key_id: 'key_InvRepl01', old_key_expires_at: deadline }),
    lifecycle(key('InvRepl01'), 'created', ago(now, { hours: 3 })),
    lifecycle(kept, 'rolled_back', ago(now, { hours: 1 }), { replacement_key_id: 'key_InvRepl01' }),
    // rotating: the grace deadline is shown
    lifecycle(key('InvRota01'), 'created', ago(now, { days: 40 })),
    lifecycle(key('InvRota01'), 'rotated', ago(now, { hours: 3 }), { replacement_key_id: 'key_InvRota02', old_key_expires_at: deadline }),
    // past the grace deadline, no expired event yet
    lifecycle(key('InvPast01'), 'created', ago(now, { days: 40 })),
    lifecycle(key('InvPast01'), 'rotated', ago(now, { days: 8 }), { replacement_key_id: 'key_InvPast02', old_key_expires_at: ago(now, { days: 1 }) }),
    // past its expires_at
    lifecycle(key('InvDate01', 'restricted'), 'created', ago(now, { days: 40 }), { expires_at: ago(now, { hours: 2 }), scopes: [{ scope: 'payments', access: ['read', 'write'] }] }),
  ]
  const { rejections } = await rt.pipeline.ingest(events.map((e) => ({ raw: Buffer.from(JSON.stringify(e)), origin: { source: 'file' as const } })))
  expect(rejections).toEqual([])
  api = await buildApi(apiDepsOf(rt))
  headers = await bearer(rt, 'viewer')
})

afterAll(async () => {
  await api?.close()
  await rt?.close()
})

const keyOf = async (id: string) => ((await api.inject({ method: 'GET', url: `/v1/keys/${id}`, headers })).json() as { key: Record<string, unknown> }).key

describe('the inventory after rotations, rollbacks and expiry', () => {
  it('a rollback deletes the replacement; the kept key is active with no deadline', async () => {
    expect(await keyOf('key_InvRepl01')).toMatchObject({ status: 'deleted', deleted_at: expect.any(String) })
    expect(await keyOf(kept.key_id)).toMatchObject({ status: 'active', rotation_grace_deadline: null, expires_at: null })
    const deleted = (await api.inject({ method: 'GET', url: '/v1/keys?status=deleted', headers })).json() as { keys: { key_id: string }[] }
    expect(deleted.keys.map((k) => k.key_id)).toEqual(['key_InvRepl01'])
  })

  it('a rotating key shows its grace deadline and full access', async () => {
    const k = await keyOf('key_InvRota01')
    expect(k).toMatchObject({ status: 'rotating', scopes: null })
    expect(Date.parse(String(k.rotation_grace_deadline) + 'Z')).toBe(Date.parse(deadline))
  })

  it('past its grace deadline or its expires_at a key is expired, before any expired event', async () => {
    expect(await keyOf('key_InvPast01')).toMatchObject({ status: 'expired' })
    expect(await keyOf('key_InvDate01')).toMatchObject({ status: 'expired', scopes: [{ scope: 'payments', access: ['read', 'write'] }] })
  })
})
