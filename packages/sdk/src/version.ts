/**
 * @module The SDK's version, and the Tinker SDK version whose wire protocol it speaks.
 */

/**
 * This package's version.
 *
 * @example
 * console.log(`@lathe/sdk ${VERSION}`);
 */
export const SDK_VERSION = '0.1.0';

/**
 * The `sdk_version` sent to the server: the Tinker Python SDK release whose protocol this SDK
 * follows, with this SDK named in the (PEP 440 / semver) local part.
 *
 * @example
 * WIRE_SDK_VERSION; // '0.25.0+lathe.ts.0.1.0'
 */
export const WIRE_SDK_VERSION = `0.25.0+lathe.ts.${SDK_VERSION}`;
