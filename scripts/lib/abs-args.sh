# Sourced by the scripts that run `ioasis` from the repository root: makes the path of every
# --plugin / --plugin-dir argument absolute, relative to the directory the user typed it in,
# before the script changes directory.
#
#   abs_plugin_args "$@"; set -- ${ABS_ARGS[@]+"${ABS_ARGS[@]}"}
#
# Handles `--plugin PATH`, `--plugin=PATH`, `--plugin NAME=PATH` (the PATH part: a `=` with no
# `/` before it separates a name, as `ioasis` reads it), and the same for --plugin-dir (DIR
# only). Everything else, and everything after `--`, is kept as it is.

# abs_path PATH: PATH made absolute against $PWD (an empty PATH stays empty).
abs_path() {
  case $1 in
    "" | /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$PWD" "$1" ;;
  esac
}

# abs_value OPTION VALUE: the value of --plugin (OPTION plugin) or --plugin-dir, made absolute.
abs_value() {
  local name
  if [[ $1 == plugin && $2 == *=* && ${2%%=*} != */* ]]; then
    name=${2%%=*}
    printf '%s=%s' "$name" "$(abs_path "${2#*=}")"
  else
    abs_path "$2"
  fi
}

# abs_plugin_args ARG...: sets the array ABS_ARGS to the arguments, paths made absolute.
abs_plugin_args() {
  ABS_ARGS=()
  local expect="" rest=0 a
  for a in "$@"; do
    if ((rest)); then
      ABS_ARGS+=("$a")
    elif [[ -n $expect ]]; then
      ABS_ARGS+=("$(abs_value "$expect" "$a")")
      expect=""
    else
      case $a in
        --) ABS_ARGS+=("$a"); rest=1 ;;
        --plugin | --plugin-dir) ABS_ARGS+=("$a"); expect=${a#--} ;;
        --plugin=*) ABS_ARGS+=("--plugin=$(abs_value plugin "${a#--plugin=}")") ;;
        --plugin-dir=*) ABS_ARGS+=("--plugin-dir=$(abs_value plugin-dir "${a#--plugin-dir=}")") ;;
        *) ABS_ARGS+=("$a") ;;
      esac
    fi
  done
}
