// Every detector, in one list: ids are part of the interface.
import type { Detector } from './detector.ts'
import expiringInUse from './expiring-in-use.ts'
import keyEnumeration from './key-enumeration.ts'
import leakPublicReport from './leak-public-report.ts'
import leakUnmatchedReport from './leak-unmatched-report.ts'
import mfaBruteforce from './mfa-bruteforce.ts'
import modeMismatch from './mode-mismatch.ts'
import ratelimitSpike from './ratelimit-spike.ts'
import rotationDueSoon from './rotation-due-soon.ts'
import rotationOverdue from './rotation-overdue.ts'
import rotationStalled from './rotation-stalled.ts'
import secretKeyClientSide from './secret-key-client-side.ts'
import staleKey from './stale-key.ts'
import usedAfterRevocation from './used-after-revocation.ts'

export const DETECTORS: Detector<any, any>[] = [
  leakPublicReport,
  leakUnmatchedReport,
  secretKeyClientSide,
  ratelimitSpike,
  keyEnumeration,
  mfaBruteforce,
  usedAfterRevocation,
  staleKey,
  rotationOverdue,
  rotationDueSoon,
  rotationStalled,
  modeMismatch,
  expiringInUse,
]
