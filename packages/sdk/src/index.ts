/**
 * @module @lathe/sdk: the Tinker client API in TypeScript (arrives with the SDK issue).
 */
/** The SDK's version. */
export const VERSION = '0.1.0';
