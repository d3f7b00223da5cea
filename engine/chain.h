/*
 * Incremental chains (--incremental): a store's images of a domain's disks,
 * each after the first a qcow2 overlay of the one before, read from the
 * dirty bitmap of a libvirt checkpoint made together with the backup.
 *
 * A store keeps one chain per domain, in its file chain-<domain uuid>: the
 * checkpoint the chain's last images were taken at (its name and XML, for
 * a redefine after the domain was defined again) and, per disk, that last
 * image (id, file, virtual size). The file is rewritten, atomically, only
 * once every image of a backup is published; until then the chain goes on
 * from the images before. Checkpoint names carry the store ("hotsnap-" and
 * eight hex digits of the store's path, then the job id), so two stores
 * keep independent chains of one guest, and a backup to another store or
 * without --incremental never takes or deletes one of them.
 *
 * Each disk is checked on its own before its backup reads incrementally:
 * the store has its last image and the image matches its sidecar's digest;
 * libvirt has the checkpoint (redefined from the chain file when the
 * domain lost it) and it covers this disk; the disk's size is what it was.
 * A disk that fails a check is read in full in the same backup, with the
 * reason; it starts its chain again from there.
 */
#ifndef HS_CHAIN_H
#define HS_CHAIN_H

#include <stdint.h>
#include <cjson/cJSON.h>
#include <libvirt/libvirt.h>

#include "err.h"

struct hs_chain_disk {
    char *target; /* "vda" */
    int nobitmap; /* not qcow2: libvirt keeps no bitmap of it, always full */
    /* the chain's last image of this disk, when the store has one */
    char *parent_id;
    char *parent_file;
    uint64_t parent_vsize;
    int incremental;    /* read from the dirty bitmap since chain->from */
    char why_full[256]; /* a disk of a chain read in full: why; "" for a new chain */
    /* what this backup published */
    char *image_id;
    char *image_file;
    uint64_t vsize;
};

struct hs_chain {
    char *store;  /* the store's directory */
    char *file;   /* its chain-<uuid> */
    char *uuid;   /* the domain's */
    char *prefix; /* "hotsnap-<store tag>-": this store's checkpoints */
    char *job_id;
    char *from;     /* the checkpoint of the chain's last images, or NULL (a new chain) */
    char *from_xml; /* its XML as recorded */
    char *name;     /* the checkpoint this backup makes */
    char *name_xml; /* its XML, read back once it exists (worker writes) */
    struct hs_chain_disk *disks;
    size_t ndisks;
    int loaded;
};

/* A chain of domain @uuid in @store for the disks @targets, the checkpoint
 * to make named after @job_id. Loop thread; nothing read yet. */
struct hs_chain *hs__chain_new(const char *store, const char *uuid, const char *job_id,
                               char *const *targets, size_t n);
void hs__chain_free(struct hs_chain *c);

/* Worker: read the chain file and check each disk's last image against its
 * sidecar. A missing file is a new chain; an unreadable one is an error. */
int hs__chain_load(struct hs_chain *c, struct hs_err *err);

/* Worker, on the domain's connection: what libvirt must have for each disk
 * to go on incrementally (the checkpoint, redefined when the domain lost
 * it; the disk in it; the disk's size). Decides each disk's incremental. */
void hs__chain_check(struct hs_chain *c, virDomainPtr dom);

/* The checkpoint XML for virDomainBackupBegin: this backup's disks with a
 * bitmap, every other disk of the domain (@all, @nall) without. */
char *hs__chain_checkpoint_xml(const struct hs_chain *c, char *const *all, size_t nall);
/* The attributes of disk @i's <disk> in the backup XML. */
const char *hs__chain_backup_mode(const struct hs_chain *c, size_t i, char *buf, size_t len);
/* Every disk read in full (libvirt refused the incremental), @why. */
void hs__chain_all_full(struct hs_chain *c, const char *why);

/* Drop the <parent> of a checkpoint's XML, in place (NULL-safe): the
 * chain file's copy is redefined once its parent is long gone. */
void hs__chain_strip_parent(char *xml);

/* Worker, after the backup: every image published, the chain file says so
 * and the store's older checkpoints of the domain go; else the checkpoint
 * this backup made goes and the chain stays as it was. 0, or a negative
 * errno with the reason in @err (the images stay published). */
int hs__chain_commit(struct hs_chain *c, virDomainPtr dom, struct hs_err *err);
void hs__chain_discard(struct hs_chain *c, virDomainPtr dom);

/* Worker, recovery: a dead run's checkpoint @name goes unless the chain
 * file @file names it; then the store's other checkpoints go as well (a
 * commit cut short). What was done, into @entry. */
void hs__chain_recover(virDomainPtr dom, const char *file, const char *name, cJSON *entry);

#endif
