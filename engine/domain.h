/* What hotsnap needs to know of a domain, parsed from its XML. */
#ifndef HS_DOMAIN_H
#define HS_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct hs_disk {
    char *target;  /* "vda" */
    char *type;    /* file, block, network, volume, dir */
    char *device;  /* disk, cdrom, floppy, lun */
    char *format;  /* driver type: qcow2, raw, ... */
    char *source;  /* file path, device path or network name; NULL when empty */
    char *backing; /* the source's immediate backing file; NULL when none */
    char *backing_format;
    int boot_order; /* 0 when none */
    int readonly;
    char *unsupported; /* why hotsnap cannot capture it; NULL when it can */
};

struct hs_domain_info {
    char *name;
    char uuid[37];
    uint64_t memory_kib;
    /* from Nova's <nova:instance> metadata, when the domain is Nova's */
    char *base_image_ref;
    char *owner_id;
    char *user_id;
    struct hs_disk *disks; /* every <disk device='disk'> in document order */
    size_t ndisks;
    char **hostdevs; /* XML of devices a managed save cannot keep */
    size_t nhostdevs;
    /* the user QEMU runs as, from a running domain's DAC label; -1 when unknown */
    long qemu_uid, qemu_gid;
};

/* Whether the user QEMU runs as is known: the domain's DAC label, else
 * libvirt's default user libvirt-qemu exists. */
int hs__domain_qemu_user_known(const struct hs_domain_info *info);

/* Parse a domain XML document. 0 or -EINVAL with a message. */
int hs__domain_parse(const char *xml, struct hs_domain_info *out, struct hs_err *err);
void hs__domain_info_clear(struct hs_domain_info *info);

/* The root disk: the one with boot order 1, else the lowest order, else the
 * first disk. -1 when the domain has none. */
int hs__domain_root_disk(const struct hs_domain_info *info);

/*
 * Choose the disks to capture (the root disk, or all with @all_disks) into
 * @idx (room for info->ndisks). Fails, naming the disk, when a chosen disk is
 * one hotsnap cannot capture. Returns the count or a negative errno.
 */
int hs__domain_select(const struct hs_domain_info *info, int all_disks, int *idx,
                      struct hs_err *err);

/* What libvirt runs for hotsnap, told by the XML (any thread). */

/* Whether a backup job's XML (virDomainBackupGetXMLDesc) is one hotsnap
 * started in @dir: a target, a scratch file or the NBD socket lies there. */
int hs__backup_xml_in_dir(const char *xml, const char *dir);
/* The file disk @target of a domain XML is mirrored into (a block copy), or
 * NULL. Caller frees. */
char *hs__domain_xml_mirror(const char *xml, const char *target);
/* Whether a domain XML carries hotsnap's job mark with @job_id. */
int hs__domain_xml_marked(const char *xml, const char *job_id);

/* hotsnap's mark on a domain it holds (live metadata, so that a managed-save
 * image it made can be told from another's) */
#define HS_MARK_NS "https://hotsnap.dev/xmlns/job/1"
#define HS_MARK_PREFIX "hotsnap"

/* @s escaped for an XML attribute or text (&, <, >, ' and "). Caller frees. */
char *hs__xml_escape(const char *s);

#endif
