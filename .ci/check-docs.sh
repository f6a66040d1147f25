#!/usr/bin/env bash
# Checks the documentation against the tree. Fails (exit 1), printing each
# problem, when:
#  (a) a Markdown file names, in backticks or a link, a repository path that
#      does not exist;
#  (b) ARCHITECTURE.md exists and does not name some src/**/*.rs file (as
#      src/x/y.rs or x/y.rs); skipped while there is no ARCHITECTURE.md;
#  (c) a file outside target/, .git/ and .ci/ mentions a design document or
#      a directory beside the repository that a fresh clone does not have.
# Runs from the repository root in about a second: no network, no cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

problems=0
problem() { echo "docs: $*"; problems=$((problems + 1)); }

# ---- (a) paths named in Markdown ------------------------------------------

# Every Markdown file in the repository, outside build output and git.
mapfile -t docs < <(find . \( -path ./target -o -path ./.git -o -path ./bench/results \) -prune -o -name '*.md' -type f -print | sed 's|^\./||' | LC_ALL=C sort)

# Prints "<line>\t<kind>\t<token>" for each backticked token (kind "code") and
# each link target (kind "link") in a Markdown file. Fenced code blocks are
# skipped; a backticked span may cross a line break. Plain POSIX awk (mawk
# has no {m,n} intervals).
extract() {
  awk '
    { line[NR] = $0 }
    END {
      fence = 0; text = ""
      for (i = 1; i <= NR; i++) {
        l = line[i]
        if (l ~ /^ ? ? ?(```|~~~)/) { fence = !fence; l = "" }
        else if (fence) l = ""
        # a reference-style link definition: [name]: target
        if (!fence && match(l, /^ ? ? ?\[[^]]+\]:[ \t]+[^ \t]+/)) {
          def = substr(l, RSTART, RLENGTH); sub(/^ ? ? ?\[[^]]+\]:[ \t]+/, "", def)
          print i "\tlink\t" def
        }
        text = text l "\n"
      }
      n = split(text, part, "`")
      at = 1
      for (k = 1; k <= n; k++) {
        p = part[k]
        if (k % 2 == 0) {
          if (p != "" && p !~ /[ \t\n]/) print at "\tcode\t" p
        } else {
          rest = p; before = 0
          while (match(rest, /\]\([^)]*\)/)) {
            target = substr(rest, RSTART + 2, RLENGTH - 3)
            pre = substr(rest, 1, RSTART); before += gsub(/\n/, "", pre)
            sub(/^</, "", target); sub(/>$/, "", target); sub(/[ \t].*$/, "", target)
            print (at + before) "\tlink\t" target
            rest = substr(rest, RSTART + RLENGTH)
          }
        }
        at += gsub(/\n/, "", p)
      }
    }' "$1"
}

checked=0
trailing='[.,;:)!?]$'
for doc in "${docs[@]}"; do
  dir="$(dirname "$doc")"
  while IFS=$'\t' read -r line kind token; do
    case "$token" in
      *' '*|*'*'*|*'<'*|*'$'*|*'...'*|*'://'*|mailto:*|'#'*|'') continue ;;
    esac
    path="${token%%#*}"      # an anchor
    path="${path%%:*}"       # a :line
    while [[ "$path" =~ $trailing && "$path" != *.. ]]; do path="${path%?}"; done
    [ -n "$path" ] || continue
    if [ "$kind" = link ]; then
      path="${path#/}"      # a link from the repository's root
    else
      case "$path" in
        /*) continue ;;     # an absolute path is not the repository's
        src/*|sql/*|tests/*|bench/*|examples/*|demo/*|pgrx-config/*|.ci/*) ;;
        */*.rs|*/*.sh|*/*.sql|*/*.md|*/*.toml) ;;
        *) continue ;;
      esac
    fi
    checked=$((checked + 1))
    if [ ! -e "$path" ] && [ ! -e "$dir/$path" ]; then
      problem "$doc:$line: names $token, which does not exist"
    fi
  done < <(extract "$doc" | LC_ALL=C sort -t $'\t' -k1,1n)
done

# ---- (b) ARCHITECTURE.md names every source file ---------------------------

if [ -f ARCHITECTURE.md ]; then
  while IFS= read -r rs; do
    rel="${rs#src/}"
    re="$(printf '%s' "$rel" | sed 's/[.[\^$*+?(){}|]/\\&/g')"
    if ! grep -Eq "(^|[^A-Za-z0-9_./-])(src/)?${re}(\$|[^A-Za-z0-9_/-])" ARCHITECTURE.md; then
      problem "ARCHITECTURE.md: does not name $rs"
    fi
  done < <(find src -name '*.rs' -type f | LC_ALL=C sort)
fi

# ---- (c) no references to documents or directories outside the clone --------

# The two patterns are spelled in pieces so that this script does not match
# itself if it is ever run from elsewhere.
design="DESIGN""[.]md"
shared="[.][.]/""shared"
while IFS= read -r hit; do
  problem "$hit (a path a fresh clone does not have)"
done < <(grep -rnoIE --exclude-dir=target --exclude-dir=.git --exclude-dir=.ci "$design|$shared" . | sed 's|^\./||' || true)

if [ "$problems" -gt 0 ]; then
  echo "docs: $problems problem(s)"
  exit 1
fi
echo "docs: ok (${#docs[@]} files, $checked paths checked)"
