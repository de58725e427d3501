"""``python -m toolwire keygen FILE`` / ``python -m toolwire pubkey FILE``.

Identity files use the format of the ``toolwire`` command (``toolwire keygen``), so
either tool reads the other's files. The public key goes to stdout, so that
``python -m toolwire keygen agent.key > agent.pub`` keeps it for sharing.
"""

from __future__ import annotations

import argparse
import sys

from toolwire import Identity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolwire", description="toolwire identity files")
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="create an identity file (mode 0600), print its public key")
    keygen.add_argument("file")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")
    pubkey = commands.add_parser("pubkey", help="print the public key of an identity file")
    pubkey.add_argument("file")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            identity = Identity.generate()
            identity.save(args.file, overwrite=args.force)
        else:
            identity = Identity.load(args.file)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(identity.public_key)
    print(f"fingerprint {identity.public_key.fingerprint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
