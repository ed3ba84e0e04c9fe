/**
 * @module Short-lived signed URLs for checkpoint archives and for the files of external (PEFT)
 * checkpoints: the download link itself carries the authorisation, so tools without the API key
 * (curl, a browser, vLLM) can fetch it until it expires.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** What a signed archive token grants. */
export interface ArchiveGrant {
  modelId: string;
  checkpointId: string;
  owner: string;
  expiresAt: number;
  /** One file of the checkpoint folder (external weights); absent: the whole archive. */
  file?: string;
}

/**
 * @example
 * const signer = new ArchiveSigner(secret);
 * const token = signer.sign({ modelId, checkpointId, owner, expiresAt: Date.now() + 900_000 });
 * signer.verify(token, Date.now()); // the grant, or undefined when forged or expired
 */
export class ArchiveSigner {
  constructor(private readonly secret: Buffer) {}

  sign(grant: ArchiveGrant): string {
    const body = Buffer.from(JSON.stringify(grant)).toString('base64url');
    return `${body}.${this.mac(body)}`;
  }

  verify(token: string, now: number): ArchiveGrant | undefined {
    const [body, mac] = token.split('.');
    if (!body || !mac) return undefined;
    const expected = Buffer.from(this.mac(body));
    const given = Buffer.from(mac);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) return undefined;
    const grant = JSON.parse(Buffer.from(body, 'base64url').toString()) as ArchiveGrant;
    return grant.expiresAt > now ? grant : undefined;
  }

  private mac(body: string): string {
    return createHmac('sha256', this.secret).update(body).digest('base64url');
  }
}
