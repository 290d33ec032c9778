#!/usr/bin/env bash
# The quotes world's text (testbed/quotes/corpus.py): Debian's bible-kjv, jargon-text, dict-devil and fortunes,
# about 9 MB of public-domain prose and attributed quotes. Installed only for `make demo-quotes` (the default
# demo and the tests do not need them); nothing is installed when all four are present.
set -euo pipefail
missing=()
command -v bible >/dev/null 2>&1 || missing+=(bible-kjv)
[ -f /usr/share/doc/jargon-text/jargon.txt.gz ] || missing+=(jargon-text)
[ -f /usr/share/dictd/devil.dict.dz ] || missing+=(dict-devil)
[ -f /usr/share/games/fortunes/people ] || missing+=(fortunes)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "the quotes world reads Debian's ${missing[*]}, and this machine has no apt-get: give your own prose with" \
       "'unmemorize demo --world quotes --corpus DIR --quotes FILE' (docs/guides/quotes-world.md)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "the quotes world reads Debian's ${missing[*]}: installing them (apt-get install --no-install-recommends ${missing[*]})"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
