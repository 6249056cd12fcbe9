#!/usr/bin/env bash
# amiflow chroot host script: the host half of the amazon-chroot builder.
#
# Runs as root on the build host, either by SSM RunCommand (the state machine) or directly
# (a local `amiflow build` on the host). It finds the EBS volume the state machine attached,
# mounts it, prepares the chroot (chroot_mounts, copy_files), runs the provisioners inside it
# through command_wrapper, and undoes all of it in reverse — also when something fails.
#
# INPUT: one job, as env-style lines `KEY=value` (value = the rest of the line, taken
# literally: nothing is evaluated by a shell). `KEY.b64=value` gives the value base64-encoded,
# for values with newlines or odd bytes. Empty lines and lines starting with # are ignored.
# Repeatable keys form ordered lists. The job comes from, in this order:
#   chroot-host.sh JOBFILE            a file ("-" = stdin)
#   chroot-host.sh --job-base64 B64   the whole job file base64-encoded (one SSM String
#                                     parameter: base64 has no quote or shell characters)
#   AMIFLOW_CHROOT_JOB_B64=B64        the same, from the environment
#
# Keys (Packer's amazon-chroot option in brackets):
#   VOLUME_ID=vol-0abc…            the attached EBS volume; found as NVMe by-id link / serial
#   DEVICE=/dev/sdf                the name given to AttachVolume [device_path]; tried as
#                                  /dev/sdX and /dev/xvdX when VOLUME_ID finds nothing
#   NVME_DEVICE_PATH=/dev/nvme1n1p [nvme_device_path] mount this + MOUNT_PARTITION instead
#   MOUNT_PATH=/mnt/…/xvdf         [mount_path] absolute; `{{.Device}}` in it is replaced by
#                                  the basename of the device found
#   MOUNT_PARTITION=1              [mount_partition] 0 = the whole device (the caller passes
#                                  0 for paravirtual images, as Packer only partitions hvm)
#   MOUNT_OPTION=noatime           [mount_options] repeatable, each becomes `-o <opt>`
#   PRE_MOUNT_COMMAND=…            [pre_mount_commands] repeatable; `{{.Device}}` rendered
#   POST_MOUNT_COMMAND=…           [post_mount_commands] repeatable; `{{.Device}}`,
#                                  `{{.MountPath}}` rendered
#   CHROOT_MOUNT=fstype source dest  [chroot_mounts] repeatable, in order; none given =
#                                  Packer's defaults (proc, sysfs, bind /dev, devpts,
#                                  binfmt_misc). fstype `bind` = `mount --bind`.
#   COPY_FILE=/etc/resolv.conf     [copy_files] repeatable; none given = /etc/resolv.conf;
#                                  a single empty `COPY_FILE=` = copy nothing
#   COMMAND_WRAPPER={{.Command}}   [command_wrapper] the host command is `/bin/sh -c <wrapper
#                                  with {{.Command}} = chroot MOUNT_PATH /bin/sh -c '<cmd>'>`
#   COMMAND=…                      a provisioner command run inside the chroot; repeatable
#   UPLOAD=<mode> <dest> <base64>  a file written to MOUNT_PATH/<dest> before the next
#                                  COMMAND (file provisioner, shell provisioner scripts);
#                                  COMMAND and UPLOAD run in the order given
#   LOCK_FILE=/var/lock/packer-chroot/lock   the device lock, shared with Packer on purpose
#   LOCK_WAIT_SECONDS=1800         give up waiting for the lock after this long
#   DEVICE_WAIT_SECONDS=120        give up waiting for the device / partition after this long
#
# Test hook (environment only): AMIFLOW_CHROOT_TEST_DEVICES="/dev/loop3 /dev/loop4" stands
# in for the EBS lookup: under the lock, the first listed device with nothing mounted from it
# is taken; an entry `vol-0abc=/dev/loop3` is only taken for that VOLUME_ID. This is how
# tests map an attached (emulated) volume to a loop device.
#
# OUTPUT: progress lines `amiflow-chroot: <step>: …` on stdout, command output as it comes.
# On failure the last marker is `amiflow-chroot: FAILED at <step> (exit N): <why>`.
# EXIT STATUS: 0, or the first failure's status (a provisioner's own exit status).
#
# Requires bash, util-linux (flock, mount, umount, partx), coreutils (base64, cp), chroot.

set -u
umask 022
export LC_ALL=C

progname=amiflow-chroot
say() { printf '%s: %s\n' "$progname" "$*"; }

# ---------------------------------------------------------------- job parsing
VOLUME_ID= DEVICE= NVME_DEVICE_PATH= MOUNT_PATH= MOUNT_PARTITION=1 COMMAND_WRAPPER='{{.Command}}'
LOCK_FILE=/var/lock/packer-chroot/lock LOCK_WAIT_SECONDS=1800 DEVICE_WAIT_SECONDS=120
MOUNT_OPTIONS=() PRE_MOUNT=() POST_MOUNT=() CHROOT_MOUNTS=() COPY_FILES=() COPY_FILES_GIVEN=0
PROVISION=()   # entries "C<command>" or "U<mode> <dest> <base64>"

die_input() { say "FAILED at input (exit 2): $*"; exit 2; }

parse_job() {
    local line key value n=0
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'} n=$((n + 1))
        case $line in ''|'#'*) continue ;; esac
        case $line in *=*) ;; *) die_input "job line $n has no '=' (is the job base64-encoded twice, or not at all?)" ;; esac
        key=${line%%=*} value=${line#*=}
        case $key in
            *.b64) key=${key%.b64}
                   value=$(printf '%s' "$value" | base64 -d 2>/dev/null) ||
                       die_input "$key.b64 is not valid base64" ;;
        esac
        case $key in
            VOLUME_ID) VOLUME_ID=$value ;;
            DEVICE|DEVICE_PATH) DEVICE=$value ;;
            NVME_DEVICE_PATH) NVME_DEVICE_PATH=$value ;;
            MOUNT_PATH) MOUNT_PATH=$value ;;
            MOUNT_PARTITION) MOUNT_PARTITION=$value ;;
            MOUNT_OPTION) MOUNT_OPTIONS+=("$value") ;;
            PRE_MOUNT_COMMAND) PRE_MOUNT+=("$value") ;;
            POST_MOUNT_COMMAND) POST_MOUNT+=("$value") ;;
            CHROOT_MOUNT) CHROOT_MOUNTS+=("$value") ;;
            COPY_FILE) COPY_FILES_GIVEN=1; [ -n "$value" ] && COPY_FILES+=("$value") ;;
            COMMAND_WRAPPER) COMMAND_WRAPPER=$value ;;
            COMMAND) PROVISION+=("C$value") ;;
            UPLOAD) PROVISION+=("U$value") ;;
            LOCK_FILE) LOCK_FILE=$value ;;
            LOCK_WAIT_SECONDS) LOCK_WAIT_SECONDS=$value ;;
            DEVICE_WAIT_SECONDS) DEVICE_WAIT_SECONDS=$value ;;
            *) die_input "unknown key '$key' in the job (see the top of chroot-host.sh)" ;;
        esac
    done
}

if [ $# -ge 2 ] && [ "$1" = --job-base64 ]; then
    job=$(printf '%s' "$2" | base64 -d 2>/dev/null) || die_input "--job-base64 is not valid base64"
    parse_job <<<"$job"
elif [ $# -ge 1 ] && [ "$1" = - ]; then
    parse_job
elif [ $# -ge 1 ]; then
    [ -r "$1" ] || die_input "cannot read the job file '$1'"
    parse_job <"$1"
elif [ -n "${AMIFLOW_CHROOT_JOB_B64:-}" ]; then
    job=$(printf '%s' "$AMIFLOW_CHROOT_JOB_B64" | base64 -d 2>/dev/null) ||
        die_input "AMIFLOW_CHROOT_JOB_B64 is not valid base64"
    parse_job <<<"$job"
else
    die_input "no job: usage: chroot-host.sh JOBFILE | - | --job-base64 B64 (or AMIFLOW_CHROOT_JOB_B64)"
fi

[ "$(id -u)" = 0 ] || die_input "must run as root (mount, chroot)"
[ -n "$MOUNT_PATH" ] || die_input "MOUNT_PATH is required"
case $MOUNT_PARTITION in ''|*[!0-9]*) die_input "MOUNT_PARTITION must be a number, got '$MOUNT_PARTITION'" ;; esac
[ -n "$VOLUME_ID$DEVICE$NVME_DEVICE_PATH${AMIFLOW_CHROOT_TEST_DEVICES:-}" ] ||
    die_input "one of VOLUME_ID, DEVICE or NVME_DEVICE_PATH is required"
case $COMMAND_WRAPPER in *'{{'*.Command*'}}'*) ;; *) die_input "COMMAND_WRAPPER must contain {{.Command}}" ;; esac
for m in "${CHROOT_MOUNTS[@]}"; do
    read -r f s d rest <<<"$m"
    [ -n "$d" ] && [ -z "$rest" ] || die_input "CHROOT_MOUNT needs exactly 3 fields (fstype source dest), got '$m'"
done
if [ ${#CHROOT_MOUNTS[@]} -eq 0 ]; then
    CHROOT_MOUNTS=("proc proc /proc" "sysfs sysfs /sys" "bind /dev /dev" "devpts devpts /dev/pts"
        "binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc")
fi
[ "$COPY_FILES_GIVEN" = 1 ] || COPY_FILES=(/etc/resolv.conf)

# Replaces every `{{.Name}}` / `{{ .Name }}` in $1 with $3; prints the result.
render() {
    local text=$1 name=$2 value=$3 pat
    for pat in "{{.$name}}" "{{ .$name }}" "{{.$name }}" "{{ .$name}}"; do
        text=${text//"$pat"/"$value"}
    done
    printf '%s' "$text"
}

# ---------------------------------------------------------------- cleanup (reverse order)
status=0 step=start
lock_held=0 root_mounted=0
mounted_extra=()   # absolute paths, in mount order
copied=()          # absolute paths

fail() { # fail <exit status> <why>: records the first failure
    local code=$1; shift
    [ "$code" -ne 0 ] || code=1
    if [ "$status" -eq 0 ]; then
        status=$code
        say "FAILED at $step (exit $code): $*"
    else
        say "also failed at $step (exit $code): $*"
    fi
}

is_mountpoint() { # exact match on the mount point field of mountinfo (octal-escaped spaces)
    local want=${1// /\\040}
    awk -v p="$want" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo
}

unmount() {
    local path=$1 try
    is_mountpoint "$path" || return 0
    for try in 1 2 3 4 5; do
        umount "$path" 2>/dev/null && return 0
        sleep 1
    done
    umount "$path"
}

cleanup() {
    local i p
    trap - EXIT INT TERM HUP
    step=cleanup
    for ((i = ${#copied[@]} - 1; i >= 0; i--)); do
        say "cleanup: removing copied file ${copied[i]}"
        rm -f -- "${copied[i]}" || fail $? "cannot remove ${copied[i]}"
    done
    for ((i = ${#mounted_extra[@]} - 1; i >= 0; i--)); do
        p=${mounted_extra[i]}
        say "cleanup: unmounting $p"
        unmount "$p" || fail $? "cannot unmount $p (a process started in the chroot may still use it)"
    done
    if [ "$root_mounted" = 1 ]; then
        say "cleanup: unmounting $MOUNT_PATH"
        unmount "$MOUNT_PATH" || fail $? "cannot unmount $MOUNT_PATH (a process started in the chroot may still use it)"
    fi
    if [ "$lock_held" = 1 ]; then flock -u 9; fi
    if [ "$status" -eq 0 ]; then say "done"; else say "finished with exit $status"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'fail 130 "interrupted"; exit 130' INT
trap 'fail 143 "terminated"; exit 143' TERM HUP

abort() { fail "$@"; exit "$status"; }

# ---------------------------------------------------------------- lock
step=lock
mkdir -p "$(dirname "$LOCK_FILE")" || abort $? "cannot create the lock directory for $LOCK_FILE"
exec 9>>"$LOCK_FILE" || abort $? "cannot open the lock file $LOCK_FILE"
say "lock: waiting for $LOCK_FILE"
flock -w "$LOCK_WAIT_SECONDS" 9 || abort 1 "no lock on $LOCK_FILE after ${LOCK_WAIT_SECONDS}s (another build holds it)"
lock_held=1

# ---------------------------------------------------------------- find the device
step=find-device
device_in_use() { # anything mounted from the device or one of its partitions?
    local real majmin
    real=$(readlink -f "$1") || return 1
    awk -v d="$real" '$1 == d || index($1, d "p") == 1 { found = 1 } END { exit !found }' /proc/mounts && return 0
    majmin=$(lsblk -rno MAJ:MIN "$real" 2>/dev/null | tr '\n' ' ')
    for m in $majmin; do
        awk -v m="$m" '$3 == m { found = 1 } END { exit !found }' /proc/self/mountinfo && return 0
    done
    return 1
}

find_device_once() {
    local id=${VOLUME_ID//-/} cand serial dev
    if [ -n "${AMIFLOW_CHROOT_TEST_DEVICES:-}" ]; then
        for cand in $AMIFLOW_CHROOT_TEST_DEVICES; do
            case $cand in
                *=*) [ "${cand%%=*}" = "$VOLUME_ID" ] || continue; cand=${cand#*=} ;;
            esac
            [ -b "$cand" ] && ! device_in_use "$cand" && { echo "$cand"; return 0; }
        done
        return 1
    fi
    if [ -n "$id" ]; then
        for cand in "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$id" \
                    "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${VOLUME_ID}"; do
            [ -b "$cand" ] && { readlink -f "$cand"; return 0; }
        done
        for serial in /sys/block/nvme*/device/serial; do
            [ -r "$serial" ] || continue
            if [ "$(tr -d ' \n' <"$serial")" = "$id" ]; then
                dev=${serial#/sys/block/}; dev=${dev%%/*}
                echo "/dev/$dev"; return 0
            fi
        done
        dev=$(lsblk -dnro NAME,SERIAL 2>/dev/null | awk -v s="$id" '$2 == s { print $1; exit }')
        [ -n "$dev" ] && [ -b "/dev/$dev" ] && { echo "/dev/$dev"; return 0; }
    fi
    if [ -n "$DEVICE" ]; then
        for cand in "$DEVICE" "${DEVICE/\/dev\/sd//dev/xvd}" "${DEVICE/\/dev\/xvd//dev/sd}"; do
            [ -b "$cand" ] && { echo "$cand"; return 0; }
        done
    fi
    return 1
}

if [ -n "$NVME_DEVICE_PATH" ]; then
    # Packer's nvme_device_path: the partition number is appended as is (…n1p + 1).
    device=${DEVICE:-$NVME_DEVICE_PATH}
    if [ "$MOUNT_PARTITION" = 0 ]; then mount_device=$NVME_DEVICE_PATH
    else mount_device=$NVME_DEVICE_PATH$MOUNT_PARTITION; fi
    say "find-device: using nvme_device_path $NVME_DEVICE_PATH"
else
    say "find-device: looking for volume '${VOLUME_ID:-?}' (attached as '${DEVICE:-?}')"
    waited=0
    until device=$(find_device_once); do
        [ "$waited" -ge "$DEVICE_WAIT_SECONDS" ] &&
            abort 1 "the volume ${VOLUME_ID:-?} did not appear as a block device within ${DEVICE_WAIT_SECONDS}s (looked for the NVMe serial, /dev/disk/by-id, ${DEVICE:-no DEVICE}); set NVME_DEVICE_PATH if this host names it differently"
        sleep 1; waited=$((waited + 1))
    done
    mount_device=
fi
say "find-device: found $device"

step=pre-mount
for c in "${PRE_MOUNT[@]}"; do
    c=$(render "$c" Device "$device")
    say "pre-mount: $c"
    /bin/sh -c "$c" || abort $? "pre_mount_command exited non-zero: $c"
done

# ---------------------------------------------------------------- mount the root
step=mount
if [ -z "$mount_device" ]; then
    real=$(readlink -f "$device")
    if [ "$MOUNT_PARTITION" = 0 ]; then mount_device=$real
    else
        case $real in *[0-9]) mount_device=${real}p$MOUNT_PARTITION ;; *) mount_device=$real$MOUNT_PARTITION ;; esac
    fi
fi
waited=0
until [ -b "$mount_device" ]; do
    # Loop devices and hosts without udev may need the partition table read again.
    [ "$waited" = 2 ] && partx -a "${real:-$device}" >/dev/null 2>&1
    [ "$waited" -ge "$DEVICE_WAIT_SECONDS" ] &&
        abort 1 "partition $mount_device did not appear within ${DEVICE_WAIT_SECONDS}s (mount_partition=$MOUNT_PARTITION; use 0 for an unpartitioned volume)"
    sleep 1; waited=$((waited + 1))
done
MOUNT_PATH=$(render "$MOUNT_PATH" Device "$(basename "$device")")
case $MOUNT_PATH in /*) ;; *) MOUNT_PATH=$PWD/$MOUNT_PATH ;; esac
MOUNT_PATH=${MOUNT_PATH%/}
is_mountpoint "$MOUNT_PATH" && abort 1 "$MOUNT_PATH is already a mount point (another build on this device name, or a leftover: umount it)"
mkdir -p "$MOUNT_PATH" || abort $? "cannot create $MOUNT_PATH"
opts=()
for o in "${MOUNT_OPTIONS[@]}"; do opts+=(-o "$o"); done
say "mount: $mount_device on $MOUNT_PATH${opts[*]:+ (${opts[*]})}"
mount "${opts[@]}" "$mount_device" "$MOUNT_PATH" || abort $? "cannot mount $mount_device on $MOUNT_PATH"
root_mounted=1

# The device is ours now: let parallel builds on this host look for theirs.
flock -u 9; lock_held=0
say "lock: released"

step=post-mount
for c in "${POST_MOUNT[@]}"; do
    c=$(render "$c" Device "$device"); c=$(render "$c" MountPath "$MOUNT_PATH")
    say "post-mount: $c"
    /bin/sh -c "$c" || abort $? "post_mount_command exited non-zero: $c"
done

# ---------------------------------------------------------------- chroot mounts
step=chroot-mounts
for m in "${CHROOT_MOUNTS[@]}"; do
    read -r fstype source dest <<<"$m"
    target=$MOUNT_PATH$dest
    mkdir -p "$target" || abort $? "cannot create $target for chroot mount '$m'"
    say "chroot-mounts: $fstype $source on $target"
    if [ "$fstype" = bind ]; then
        mount --bind "$source" "$target" || abort $? "cannot bind $source on $target"
    else
        mount -t "$fstype" "$source" "$target" || abort $? "cannot mount $fstype $source on $target"
    fi
    mounted_extra+=("$target")
done

# ---------------------------------------------------------------- copy files
step=copy-files
for f in "${COPY_FILES[@]}"; do
    say "copy-files: $f"
    cp --remove-destination -- "$f" "$MOUNT_PATH$f" || abort $? "cannot copy $f into the chroot"
    copied+=("$MOUNT_PATH$f")
done

# ---------------------------------------------------------------- provision
step=provision
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
n=0
for p in "${PROVISION[@]}"; do
    n=$((n + 1))
    case $p in
        C*)
            cmd=${p#C}
            inner="chroot $(quote "$MOUNT_PATH") /bin/sh -c $(quote "$cmd")"
            say "provision[$n]: $cmd"
            /bin/sh -c "$(render "$COMMAND_WRAPPER" Command "$inner")"
            rc=$?
            [ "$rc" = 0 ] || abort "$rc" "provisioner command $n exited $rc: $cmd"
            ;;
        U*)
            read -r mode dest data <<<"${p#U}"
            [ -n "$dest" ] || abort 2 "UPLOAD $n needs '<mode> <dest> <base64>'"
            say "provision[$n]: upload $dest (mode $mode)"
            mkdir -p "$(dirname "$MOUNT_PATH$dest")" &&
                printf '%s' "$data" | base64 -d >"$MOUNT_PATH$dest" &&
                chmod "$mode" "$MOUNT_PATH$dest" || abort $? "cannot write $dest into the chroot"
            ;;
    esac
done

step=done
exit 0
