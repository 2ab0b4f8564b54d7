/*
 * hull-pause is the waiting stage of a pod sandbox process (see
 * internal/agent/pause.go and docs/security.md#pod-sandbox-process). The
 * agent's setup stage sets the process's namespaces, root, user and
 * capabilities, then executes this program from the read-only /pause of
 * the process's root. It holds no Go runtime: all it does is wait.
 *
 * It tells the agent it runs with one zero byte on descriptor 3, then
 * takes every signal it can: SIGINT and SIGTERM end it with status 0, as
 * Kubernetes' pause does; SIGCHLD reaps the children its PID namespace
 * gives it when it is that namespace's PID 1; every other signal is
 * ignored. It does nothing else: it opens no file, changes no identity
 * and asks for no privilege.
 *
 * Built static (make build: bin/hull-pause) and packed into the guest
 * image by `hull image build`.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The descriptor on which the agent waits for the zero byte. */
#define SYNC_FD 3

static void reap(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

/*
 * The kernel's signal set: every signal, 1 to 64. The C library's own
 * sets leave out the two real-time signals it keeps for its threads,
 * whose default action would end the process: the calls go to the kernel
 * directly.
 */
static const uint64_t all = ~(uint64_t)0;
_Static_assert(_NSIG - 1 == 64, "the kernel's signal set is 64 bits here");

int main(void)
{
	int sig;

	/*
	 * Not dumpable: a container of the pod that runs as the same user
	 * cannot ptrace it or open its /proc entries.
	 */
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

	/*
	 * Every signal is blocked and taken by rt_sigtimedwait, so none
	 * takes its default action. Dispositions then go back to the
	 * default: an ignored SIGCHLD, kept across exec, would make the
	 * kernel reap children itself. A blocked signal is queued whatever
	 * its disposition, also when it comes from inside the PID
	 * namespace whose init this is.
	 */
	if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, sizeof(all)) != 0)
		return 1;
	for (sig = 1; sig <= 64; sig++) {
		struct sigaction dfl = { .sa_handler = SIG_DFL };

		if (sig != SIGKILL && sig != SIGSTOP)
			(void)sigaction(sig, &dfl, NULL);
	}

	if (fcntl(SYNC_FD, F_GETFD) != -1) {
		static const char zero = 0;
		ssize_t n;

		do {
			n = write(SYNC_FD, &zero, 1);
		} while (n < 0 && errno == EINTR);
		(void)close(SYNC_FD);
	}

	/* A child that ended before the mask was set sent a SIGCHLD that
	 * may be lost. */
	reap();
	for (;;) {
		sig = (int)syscall(SYS_rt_sigtimedwait, &all, NULL, NULL, sizeof(all));
		switch (sig) {
		case SIGINT:
		case SIGTERM:
			_exit(0);
		case SIGCHLD:
			reap();
			break;
		default:
			break;
		}
	}
}
