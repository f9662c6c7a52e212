// X25519 (RFC 7748) from @noble/curves' Montgomery ladder alone. The
// package's own `x25519` computes the public key on the Edwards curve,
// which brings the whole Edwards module into a bundle (about 2 KB gzipped
// of the budget); the ladder gives the same keys (the login vectors check
// it byte for byte).

import { montgomery } from '@noble/curves/abstract/montgomery.js';
import { pow } from '@noble/curves/abstract/modular.js';

const P = 2n ** 255n - 19n;

export const x25519 = montgomery({
  P,
  type: 'x25519',
  // x^(p-2) = 1/x (Fermat), used once per ladder.
  powPminus2: (x) => pow(x, P - 2n, P),
  // RFC 7748 section 5: clear the three low bits and the top bit, set bit 254.
  adjustScalarBytes: (scalar) => {
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
    return scalar;
  },
});
