# shellcheck shell=bash
# Shell helpers shared by the launch scripts (sourced, not run).

# Prints one word so that a POSIX shell reads it back unchanged.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then  # --flag='a value'
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/\'\\\'\'}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_words() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "${word}")"
  done
  printf '%s\n' "${out}"
}

# Whether $1 is an integer in 1..$2. The text is checked before any
# arithmetic: bash's integers wrap around past 2^63 (2^64 + 1 reads as 1).
int_in_range() {
  [[ $1 =~ ^[1-9][0-9]{0,17}$ ]] && (($1 <= $2))
}

# Appends --multihost to a diffusion_lm.main command that lacks it.
with_multihost() {
  local is_main=0 has_flag=0 word
  for word in "$@"; do
    case "${word}" in
      diffusion_lm.main | */diffusion_lm/main.py | diffusion_lm/main.py) is_main=1 ;;
      --multihost | --multihost=* | --nomultihost) has_flag=1 ;;
      --) break ;;
    esac
  done
  COMMAND=()
  if ((is_main && !has_flag)); then
    local added=0
    for word in "$@"; do
      if [[ ${word} == "--" ]] && ((!added)); then
        COMMAND+=(--multihost)
        added=1
      fi
      COMMAND+=("${word}")
    done
    ((added)) || COMMAND+=(--multihost)
  else
    COMMAND=("$@")
  fi
}
