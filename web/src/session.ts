/**
 * @module The signed-in key and the SDK clients made for it. The key stays in this tab's
 * sessionStorage only.
 */
import { LatheExtensions, ServiceClient, type RestClient } from '@lathe/sdk';

const STORAGE_KEY = 'lathe.apiKey';

/** The clients of one API key. */
export interface Session {
  apiKey: string;
  lathe: LatheExtensions;
  rest: RestClient;
  /** Made on first use: it opens a server session with heartbeats (sampling needs one). */
  service(): ServiceClient;
  close(): Promise<void>;
}

function open(apiKey: string): Session {
  const baseUrl = location.origin;
  const rest = new ServiceClient({ baseUrl, apiKey, heartbeatIntervalMs: 0 }).createRestClient();
  let service: ServiceClient | undefined;
  return {
    apiKey,
    lathe: new LatheExtensions({ baseUrl, apiKey }),
    rest,
    service: () => (service ??= new ServiceClient({ baseUrl, apiKey })),
    close: async () => service?.close(),
  };
}

/** The session of the key saved in this tab, if any. */
export function restore(): Session | undefined {
  const key = sessionStorage.getItem(STORAGE_KEY);
  return key ? open(key) : undefined;
}

/**
 * Checks `apiKey` against the server (a 401 rejects) and keeps it for this tab.
 *
 * @example
 * const session = await signIn('tml-…');
 */
export async function signIn(apiKey: string): Promise<Session> {
  const session = open(apiKey.trim());
  await session.lathe.listRuns({ limit: 1 });
  sessionStorage.setItem(STORAGE_KEY, session.apiKey);
  return session;
}

/** Forgets the key. */
export async function signOut(session: Session): Promise<void> {
  sessionStorage.removeItem(STORAGE_KEY);
  await session.close();
}
