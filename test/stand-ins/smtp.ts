// A real SMTP server on loopback (the smtp-server package) that parses what it receives (mailparser). Recipients in
// `refuse` are refused for good (550), like a mailbox that does not exist.
import type { AddressInfo } from 'node:net'
import { simpleParser, type ParsedMail } from 'mailparser'
import { SMTPServer } from 'smtp-server'

export interface SmtpStandIn {
  url: string
  mails: ParsedMail[]
  /** Addresses answered with 550 at RCPT TO. */
  refuse: Set<string>
  /** Called with each mail before the server answers 250 (a test can kill the sender there); the answer waits for it. */
  beforeAnswer?: (mail: ParsedMail) => void | Promise<void>
  close(): Promise<void>
}

export async function startSmtpStandIn(): Promise<SmtpStandIn> {
  const mails: ParsedMail[] = []
  const refuse = new Set<string>()
  const state: { beforeAnswer?: SmtpStandIn['beforeAnswer'] } = {}
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onRcptTo(address, _session, done) {
      if (!refuse.has(address.address)) return done()
      done(Object.assign(new Error(`mailbox ${address.address} unavailable`), { responseCode: 550 }))
    },
    onData(stream, _session, done) {
      simpleParser(stream).then(
        (mail) => {
          mails.push(mail)
          void Promise.resolve(state.beforeAnswer?.(mail)).finally(() => done())
        },
        (err: Error) => done(err),
      )
    },
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const port = (server.server.address() as AddressInfo).port
  return Object.assign(state, { url: `smtp://127.0.0.1:${port}`, mails, refuse, close: () => new Promise<void>((r) => server.close(() => r())) })
}
