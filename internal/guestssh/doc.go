// Package guestssh is how the banger daemon and CLI talk to guests over SSH.
//
// It owns four things:
//
//   - banger's client key: an ed25519 key in OpenSSH format that EnsureKey
//     creates on first use (0600, with a .pub beside it) and that guests trust
//     for root;
//   - banger's own known_hosts file (KnownHosts): guest host keys are pinned
//     only with Pin, from the keys the guest announces on its own console
//     (ConsoleHostKeys reads the BANGER-HOSTKEY lines), never on first use
//     from the network; a host without a pin is refused with a
//     *HostKeyUnknownError, a changed key with a *HostKeyMismatchError; Pin
//     replaces an address's older pins and Remove drops a deleted VM's
//     entries, so a reused guest IP never keeps another VM's keys;
//   - a Go SSH client (Dial, WaitReady, Client.Run, Client.RunScript) whose
//     Run quotes argv for the remote POSIX shell word by word and reports the
//     remote exit status faithfully (a signal-killed command gives 128+N);
//   - the handover to the system ssh client for interactive sessions
//     (SystemSSHArgs), using the same key and known_hosts file, with
//     Client.Shell as a fallback when no ssh binary is installed.
//
// Lessons from upstream encoded here: the remote argv must be quoted
// (`sh -c 'exit 42'` once returned 0), and known_hosts entries must be removed
// when a VM is deleted (a reused guest IP made WaitReady time out).
package guestssh
