# bash completion for hostagent-client                       -*- shell-script -*-
#
# Installed as /usr/share/bash-completion/completions/hostagent-client.
# Completes options, namespaces, methods and parameter names.  Methods and
# parameters come from the agent's rpc.discover (through
# "hostagent-client --list-methods", which falls back to the client's
# built-in schema when the agent cannot be reached), using the --socket or
# --host/--port/--cert/--key/--ca already on the command line (or
# $HOSTAGENT_SOCKET, which the client reads itself).

# Seconds a method list is reused before asking the agent again.
_HOSTAGENT_CLIENT_CACHE_SECONDS=30

_hostagent_client_methods()
{
    # $1: the client command; the rest: connection options.
    local key="$*"
    if [[ $key == "${_hostagent_client_cache_key-}" ]] &&
        ((SECONDS - ${_hostagent_client_cache_time:-0} < \
            _HOSTAGENT_CLIENT_CACHE_SECONDS)); then
        printf '%s\n' "$_hostagent_client_cache"
        return
    fi
    local cmd=$1
    shift
    _hostagent_client_cache=$("$cmd" "$@" --timeout 2 --list-methods \
        2>/dev/null | command grep -v '^#')
    _hostagent_client_cache_key=$key
    _hostagent_client_cache_time=$SECONDS
    printf '%s\n' "$_hostagent_client_cache"
}

_hostagent_client()
{
    local cmd=${1:-hostagent-client}
    [[ $cmd == "~"* ]] && cmd=hostagent-client
    # Split the line up to the cursor on blanks ourselves: bash's
    # COMP_WORDS breaks "name=value" and "name:=json" at "=" and ":".
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -r -a words <<<"$line"
    local cur=""
    if [[ -n $line && $line != *[[:space:]] && ${#words[@]} -gt 0 ]]; then
        cur=${words[${#words[@]} - 1]}
        unset 'words[${#words[@]}-1]'
    fi

    local -a conn=() pos=()
    local i w want=""
    for ((i = 1; i < ${#words[@]}; i++)); do
        w=${words[i]}
        if [[ -n $want ]]; then
            case $want in
            --socket | -a | --host | -p | --port | --cert | --key | --ca)
                conn+=("$want" "$w")
                ;;
            esac
            want=""
            continue
        fi
        case $w in
        --socket | -a | --host | -p | --port | --cert | --key | --ca | \
            --timeout | -f)
            want=$w
            ;;
        -*) ;;
        *) pos+=("$w") ;;
        esac
    done

    local -a cands=()
    local nospace=""
    if [[ -n $want ]]; then
        case $want in
        --socket | --cert | --key | --ca | -f)
            compopt -o filenames 2>/dev/null
            ;;
        esac
        case $want in
        --socket | --cert | --key | --ca)
            mapfile -t cands < <(compgen -f -- "$cur")
            ;;
        -f)
            mapfile -t cands < <(compgen -f -- "$cur")
            [[ -z $cur || $cur == - ]] && cands+=(-)
            ;;
        -a | --host)
            mapfile -t cands < <(compgen -A hostname -- "$cur")
            ;;
        esac
    elif [[ $cur == -* ]]; then
        # Every option of hostagent-client (tests/test_contrib.py checks
        # the list against the client's parser).
        mapfile -t cands < <(compgen -W '-h --help --socket -a --host
            -p --port --cert --key --ca --timeout -f --json --text
            --list-methods' -- "$cur")
    else
        local methods
        methods=$(_hostagent_client_methods "$cmd" "${conn[@]}")
        # NAMESPACE.METHOD as one word: its params come next.
        if [[ ${#pos[@]} -ge 1 && ${pos[0]} == ?*.?* && ${pos[0]} != *=* ]]
        then
            pos=("${pos[0]%%.*}" "${pos[0]#*.}" "${pos[@]:1}")
        fi
        case ${#pos[@]} in
        0)
            mapfile -t cands < <(compgen -W \
                "$(awk '{print $1}' <<<"$methods" | sort -u)" -- "$cur")
            ;;
        1)
            mapfile -t cands < <(compgen -W "$(awk -v ns="${pos[0]}" \
                '$1 == ns {print $2}' <<<"$methods")" -- "$cur")
            ;;
        *)
            # Parameter names not given yet, as "name=" or "name:=".
            local params given p
            params=$(awk -v ns="${pos[0]}" -v verb="${pos[1]}" \
                '$1 == ns && $2 == verb {for (i = 3; i <= NF; i++) print $i}' \
                <<<"$methods")
            given=" "
            for p in "${pos[@]:2}"; do
                [[ $p == *=* ]] && given+="${p%%[:=]*} "
            done
            for p in $params; do
                [[ $given == *" ${p%%[:=]*} "* ]] && continue
                [[ $p == "$cur"* ]] && cands+=("$p")
            done
            nospace=1
            ;;
        esac
    fi

    # bash replaces only the part of the word after the last "=" or ":"
    # (COMP_WORDBREAKS): offer just that part.
    if [[ $cur == *[=:]* ]]; then
        local prefix=${cur%"${cur##*[=:]}"}
        for i in "${!cands[@]}"; do
            cands[i]=${cands[i]#"$prefix"}
        done
    fi
    COMPREPLY=("${cands[@]}")
    if [[ -n $nospace ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}

complete -F _hostagent_client hostagent-client
