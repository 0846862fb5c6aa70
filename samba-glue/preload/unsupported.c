/*
 * unsupported.c: calls with no meaning for a routed database. Each fails with
 * TDB_ERR_EINVAL and a log line naming the call; nothing pretends to have worked.
 *
 * - Transactions: rctdb has none. A clustered database's records live on different
 *   nodes, and Samba's volatile databases (the ones worth routing) never use them.
 * - Whole-database and raw hash-list locks: on a cluster they would stop every node.
 *   rctdbd takes them itself when it must (recovery, traverse).
 */

#include "preload.h"

#define NO_TRANSACTIONS "rctdb has no transactions (route only databases that need none)"
#define NO_WHOLE_DB_LOCKS "a lock on the whole database would stop the cluster"

#define UNSUPPORTED_ON_ROUTED(function, why)                                                   \
	PUBLIC int function(struct tdb_context *tdb)                                          \
	{                                                                                      \
		struct routed_db *db = routed_of(tdb);                                         \
                                                                                               \
		if (db == NULL) {                                                              \
			return real_tdb()->function(tdb);                                      \
		}                                                                              \
		return routed_unsupported(db, #function, why);                                 \
	}

UNSUPPORTED_ON_ROUTED(tdb_transaction_start, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_transaction_start_nonblock, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_transaction_prepare_commit, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_transaction_commit, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_transaction_cancel, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_transaction_write_lock_mark, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_transaction_write_lock_unmark, NO_TRANSACTIONS)
UNSUPPORTED_ON_ROUTED(tdb_lockall, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_lockall_nonblock, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_unlockall, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_lockall_read, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_lockall_read_nonblock, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_unlockall_read, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_lockall_mark, NO_WHOLE_DB_LOCKS)
UNSUPPORTED_ON_ROUTED(tdb_lockall_unmark, NO_WHOLE_DB_LOCKS)

/* No transaction is ever active on a routed database. */
PUBLIC bool tdb_transaction_active(struct tdb_context *tdb)
{
	return routed_of(tdb) == NULL ? real_tdb()->tdb_transaction_active(tdb) : false;
}

/* libtdb's internal hash-list locks (exported for its own tools). */
PUBLIC int tdb_lock_nonblock(struct tdb_context *tdb, int list, int ltype)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_lock_nonblock(tdb, list, ltype);
	}
	return routed_unsupported(db, "tdb_lock_nonblock", "hash lists are one node's file's");
}

PUBLIC int tdb_unlock(struct tdb_context *tdb, int list, int ltype)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_unlock(tdb, list, ltype);
	}
	return routed_unsupported(db, "tdb_unlock", "hash lists are one node's file's");
}
