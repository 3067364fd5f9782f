// Every detector, in one list: ids are part of the interface.
import type { Detector } from './detector.ts'
import accountTakeover from './account-takeover.ts'
import dormantReactivated from './dormant-reactivated.ts'
import envReuse from './env-reuse.ts'
import expiringInUse from './expiring-in-use.ts'
import keyEnumeration from './key-enumeration.ts'
import leakPublicReport from './leak-public-report.ts'
import leakUnmatchedReport from './leak-unmatched-report.ts'
import mfaBruteforce from './mfa-bruteforce.ts'
import modeMismatch from './mode-mismatch.ts'
import moneySpike from './money-spike.ts'
import newNetwork from './new-network.ts'
import orphaned from './orphaned.ts'
import overprivileged from './overprivileged.ts'
import passwordSpray from './password-spray.ts'
import ratelimitSpike from './ratelimit-spike.ts'
import rotationDueSoon from './rotation-due-soon.ts'
import rotationGraceTooLong from './rotation-grace-too-long.ts'
import rotationOverdue from './rotation-overdue.ts'
import rotationStalled from './rotation-stalled.ts'
import scopeProbe from './scope-probe.ts'
import secretKeyClientSide from './secret-key-client-side.ts'
import sensitiveChangeWithoutStepUp from './sensitive-change-without-step-up.ts'
import staleKey from './stale-key.ts'
import usedAfterExpiry from './used-after-expiry.ts'
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
  newNetwork,
  dormantReactivated,
  scopeProbe,
  moneySpike,
  accountTakeover,
  passwordSpray,
  orphaned,
  envReuse,
  usedAfterExpiry,
  rotationGraceTooLong,
  overprivileged,
  sensitiveChangeWithoutStepUp,
]
