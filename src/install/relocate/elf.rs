//! The ELF step of relocation (format doc 7.4): rewrite the `DT_RPATH`/`DT_RUNPATH` string
//! and the `PT_INTERP` interpreter in place, following Spack's own ELF reader
//! (`spack.util.elf`) rule for rule.
//!
//! The `object` crate decodes the file (header, program headers, dynamic array, section
//! headers; both classes, both byte orders); this module applies Spack's reading rules to
//! those records and works out where the two C strings lie. Rewriting is a plain copy of
//! bytes into the caller's buffer (the mapped file), never done through `object`.
//!
//! Spack's reader is more lenient than `object`'s convenience accessors in a few places, and
//! the step must accept exactly the files Spack accepts, so the tables are read as Spack reads
//! them: `e_phnum` program headers and up to `e_shnum` section headers of the class's entry
//! size (whatever `e_phentsize`/`e_shentsize` say, no extended numbering, a section table may
//! end after the string table's entry), any `EI_VERSION`, and the dynamic array entry by entry
//! up to `DT_NULL`, even if `p_filesz` runs past the end of the file.
//!
//! A file Spack's reader rejects is skipped, as Spack does: [`elf_edits`] then returns no
//! edit, and [`try_elf_edits`] says why ([`ElfError`]). Rejected: anything that is not ELF or
//! not `ET_EXEC`/`ET_DYN`; a truncated header or program header table; an unterminated or
//! truncated `PT_INTERP`; a dynamic array that ends before `DT_NULL`; several
//! `DT_RPATH`/`DT_RUNPATH` entries or not exactly one `DT_STRTAB`; and, when the dynamic
//! array has an rpath, a `DT_NEEDED` or a `DT_SONAME`, a string table that is no `SHT_STRTAB`
//! section at the mapped offset, lies past the end of the file, or does not hold every one of
//! those strings NUL-terminated (a bad `DT_NEEDED` thus also keeps the interpreter as it is).

use object::elf::{
    FileHeader32, FileHeader64, DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH, DT_SONAME, DT_STRTAB,
    ET_DYN, ET_EXEC, PT_DYNAMIC, PT_INTERP, PT_LOAD, SHT_STRTAB,
};
use object::read::elf::{Dyn as _, FileHeader, ProgramHeader as _, SectionHeader as _};
use object::read::{FileKind, ReadRef};
use object::{Endianness, Pod};

use super::map::RelocationMap;

/// Why the ELF step skips a file (Spack's `ElfParsingError`, which it ignores there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// No ELF magic, an unknown class, or shorter than the identification bytes.
    #[error("not an ELF file")]
    NotElf,
    /// A relocatable object, core file, or other type the step leaves alone.
    #[error("ELF type {0:#x} is neither an executable (ET_EXEC) nor a shared object (ET_DYN)")]
    NotLinked(u16),
    /// The file claims to be ELF but cannot be read as Spack reads it.
    #[error("malformed ELF file: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> ElfError {
    ElfError::Malformed(what.into())
}

/// A C string to rewrite: where it is and its old and new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CStringEdit {
    pub offset: usize,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

/// The edits the ELF step wants for one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfEdits {
    pub rpath: Option<CStringEdit>,
    pub interp: Option<CStringEdit>,
}

impl ElfEdits {
    /// Do all edits fit in place?
    pub fn fits(&self) -> bool {
        [&self.rpath, &self.interp]
            .into_iter()
            .flatten()
            .all(|e| e.new.len() <= e.old.len())
    }

    /// Write the edits, NUL-filling the rest of each old string.
    pub fn apply(&self, data: &mut [u8]) {
        for e in [&self.rpath, &self.interp].into_iter().flatten() {
            data[e.offset..e.offset + e.new.len()].copy_from_slice(&e.new);
            data[e.offset + e.new.len()..e.offset + e.old.len()].fill(0);
        }
    }
}

/// The two strings Spack's reader found: file offset and value (without the NUL).
#[derive(Debug, Default)]
struct Strings {
    rpath: Option<(usize, Vec<u8>)>,
    interp: Option<(usize, Vec<u8>)>,
}

/// Read the rpath and interpreter of an ELF file as Spack's reader does.
fn locate(data: &[u8]) -> Result<Strings, ElfError> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf32) => locate_in::<FileHeader32<Endianness>>(data),
        Ok(FileKind::Elf64) => locate_in::<FileHeader64<Endianness>>(data),
        _ => Err(ElfError::NotElf),
    }
}

/// `count` records of type `T` at `offset`, or what `what` names is cut short.
fn records<'d, T: Pod>(
    data: &'d [u8],
    offset: u64,
    count: usize,
    what: &str,
) -> Result<&'d [T], ElfError> {
    data.read_slice_at(offset, count)
        .map_err(|()| malformed(format!("the {what} runs past the end of the file")))
}

fn locate_in<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<Strings, ElfError> {
    // Magic and class were checked by `FileKind`; Spack also wants a known byte order, but
    // not `EI_VERSION` 1 (which `FileHeader::parse` requires).
    let header = data
        .read_at::<H>(0)
        .map_err(|()| malformed("the ELF header runs past the end of the file"))?;
    if !header.is_little_endian() && !header.is_big_endian() {
        return Err(malformed("unknown ELF byte order"));
    }
    let endian = header.endian().map_err(|e| malformed(e.to_string()))?;
    let e_type = header.e_type(endian);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(ElfError::NotLinked(e_type.0));
    }
    // Not `FileHeader::program_headers`, which also insists on `e_phentsize`, reads no
    // table at offset 0 and decodes extended counts: Spack takes the two fields as they are.
    let segments = records::<H::ProgramHeader>(
        data,
        header.e_phoff(endian).into(),
        header.e_phnum(endian).into(),
        "program header table",
    )?;

    // Segments without file bytes do not count; the last PT_INTERP and PT_DYNAMIC win.
    let mut loads: Vec<(u64, u64)> = Vec::new();
    let (mut interp_segment, mut dynamic_segment) = (None, None);
    for segment in segments {
        if segment.p_filesz(endian).into() == 0 {
            continue;
        }
        match segment.p_type(endian) {
            PT_LOAD => loads.push((
                segment.p_offset(endian).into(),
                segment.p_vaddr(endian).into(),
            )),
            PT_INTERP => interp_segment = Some(segment),
            PT_DYNAMIC => dynamic_segment = Some(segment),
            _ => {}
        }
    }
    // Stable, like Python's sort: among equal addresses the later header comes last.
    loads.sort_by_key(|&(_, vaddr)| vaddr);

    let mut strings = Strings::default();
    if let Some(segment) = interp_segment {
        let interp = segment
            .interpreter(endian, data)
            .map_err(|e| malformed(e.to_string()))?
            .unwrap_or_default();
        strings.interp = Some((to_usize(segment.p_offset(endian).into())?, interp.to_vec()));
    }
    let Some(segment) = dynamic_segment.filter(|_| !loads.is_empty()) else {
        return Ok(strings);
    };

    // The dynamic array, entry by entry up to DT_NULL, never past `p_filesz`.
    let (dyn_offset, dyn_size) = segment.file_range(endian);
    let entry_size = std::mem::size_of::<H::Dyn>() as u64;
    let (mut rpaths, mut strtabs) = (0usize, 0usize);
    let (mut rpath_val, mut strtab_vaddr) = (0u64, 0u64);
    let mut names: Vec<u64> = Vec::new();
    let mut soname: Option<u64> = None;
    for i in 0..dyn_size / entry_size {
        let entry = dyn_offset
            .checked_add(i * entry_size)
            .and_then(|at| data.read_at::<H::Dyn>(at).ok())
            .ok_or_else(|| malformed("the dynamic array ends before its DT_NULL entry"))?;
        let (tag, val) = (entry.tag(endian), entry.val(endian));
        if tag == DT_NULL {
            break;
        } else if tag == DT_RPATH || tag == DT_RUNPATH {
            rpaths += 1;
            rpath_val = val;
        } else if tag == DT_STRTAB {
            strtabs += 1;
            strtab_vaddr = val;
        } else if tag == DT_NEEDED {
            names.push(val);
        } else if tag == DT_SONAME {
            soname = Some(val);
        }
    }
    if rpaths > 1 {
        return Err(malformed("more than one DT_RPATH/DT_RUNPATH entry"));
    }
    if strtabs != 1 {
        return Err(malformed(format!("{strtabs} DT_STRTAB entries, not one")));
    }
    if rpaths == 0 && names.is_empty() && soname.is_none() {
        return Ok(strings);
    }

    // Spack reads the string table, and every string it names, whenever there is one of
    // them: a bad DT_NEEDED or DT_SONAME string skips the whole file, interpreter included.
    let strtab_offset = vaddr_to_offset(&loads, strtab_vaddr);
    let table = string_table(header, endian, data, strtab_offset)?;
    names.extend(soname);
    for &at in &names {
        c_string(table, at)?;
    }
    if rpaths == 1 {
        let rpath = c_string(table, rpath_val)?;
        // Both fit in the file: the string lies in the table, which lies in the file.
        let offset = to_usize(strtab_offset)? + to_usize(rpath_val)?;
        strings.rpath = Some((offset, rpath.to_vec()));
    }
    Ok(strings)
}

/// Spack's `vaddr_to_offset`: the `PT_LOAD` (sorted by address) with the largest `p_vaddr`
/// not above `vaddr`, or, Python's `list[-1]` when there is none, the last one. The result
/// is exact (it may be negative or beyond `u64`, then no section is found there). `loads`
/// is not empty (Spack reads no dynamic array without a `PT_LOAD`).
fn vaddr_to_offset(loads: &[(u64, u64)], vaddr: u64) -> i128 {
    let idx = loads.partition_point(|&(_, v)| v <= vaddr);
    let (p_offset, p_vaddr) = loads[idx.checked_sub(1).unwrap_or(loads.len() - 1)];
    i128::from(p_offset) - i128::from(p_vaddr) + i128::from(vaddr)
}

/// The bytes of the first `SHT_STRTAB` section whose `sh_offset` is `offset`. Like Spack
/// (and unlike `FileHeader::section_headers`, which wants the whole table, a matching
/// `e_shentsize` and decodes extended counts), up to `e_shnum` headers are read one by one
/// from `e_shoff` until that section: the table may be cut short after it.
fn string_table<'d, H: FileHeader<Endian = Endianness>>(
    header: &H,
    endian: Endianness,
    data: &'d [u8],
    offset: i128,
) -> Result<&'d [u8], ElfError> {
    let table: u64 = header.e_shoff(endian).into();
    let entry_size = std::mem::size_of::<H::SectionHeader>() as u64;
    for i in 0..u64::from(header.e_shnum(endian)) {
        let section = table
            .checked_add(i * entry_size)
            .and_then(|at| data.read_at::<H::SectionHeader>(at).ok())
            .ok_or_else(|| {
                malformed("the section header table ends before the dynamic string table's")
            })?;
        if section.sh_type(endian) == SHT_STRTAB
            && i128::from(section.sh_offset(endian).into()) == offset
        {
            return section
                .data(endian, data)
                .map_err(|_| malformed("the dynamic string table runs past the end of the file"));
        }
    }
    Err(malformed(format!(
        "no SHT_STRTAB section at the dynamic string table's offset {offset:#x}"
    )))
}

/// The NUL-terminated string at `at` in `table` (Spack's `parse_c_string`).
fn c_string(table: &[u8], at: u64) -> Result<&[u8], ElfError> {
    table
        .read_bytes_at_until(at..table.len() as u64, 0)
        .map_err(|()| {
            malformed(format!(
                "no NUL-terminated string at offset {at:#x} of the {}-byte dynamic string table",
                table.len()
            ))
        })
}

fn to_usize(v: impl TryInto<usize>) -> Result<usize, ElfError> {
    v.try_into()
        .map_err(|_| malformed("an offset does not fit in memory"))
}

/// The first key of `map` that is a prefix of `s`, and the substituted string.
pub fn substitute_prefix(s: &[u8], map: &RelocationMap) -> Option<Vec<u8>> {
    map.pairs()
        .iter()
        .find(|(old, _)| s.starts_with(old))
        .map(|(old, new)| {
            let mut out = new.clone();
            out.extend_from_slice(&s[old.len()..]);
            out
        })
}

/// The edits of the ELF step for a file's bytes, or why Spack would skip the file.
pub fn try_elf_edits(data: &[u8], map: &RelocationMap) -> Result<ElfEdits, ElfError> {
    let strings = locate(data)?;
    let mut edits = ElfEdits::default();
    if let Some((offset, old)) = strings.rpath {
        // Empty entries (padding colons) are dropped; an unchanged rpath is left alone.
        let mut entries: Vec<Vec<u8>> = old
            .split(|&b| b == b':')
            .filter(|e| !e.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut changed = false;
        for e in entries.iter_mut() {
            if let Some(new) = substitute_prefix(e, map) {
                *e = new;
                changed = true;
            }
        }
        if changed {
            edits.rpath = Some(CStringEdit {
                offset,
                old,
                new: entries.join(&b':'),
            });
        }
    }
    if let Some((offset, old)) = strings.interp {
        if let Some(new) = substitute_prefix(&old, map) {
            edits.interp = Some(CStringEdit { offset, old, new });
        }
    }
    Ok(edits)
}

/// The edits of the ELF step for a file's bytes; none for a file Spack skips.
pub fn elf_edits(data: &[u8], map: &RelocationMap) -> ElfEdits {
    try_elf_edits(data, map).unwrap_or_default()
}

/// The rpath of an ELF file, if it has one Spack would read.
pub fn rpath(data: &[u8]) -> Option<Vec<u8>> {
    locate(data).ok()?.rpath.map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use object::elf::{
        DynamicTag, FileFlags, FileType, Machine, ProgramType, ELFOSABI_NONE, EM_386, EM_PPC,
        EM_PPC64, EM_X86_64, ET_CORE, ET_REL, PF_R,
    };
    use object::write::elf::{FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Writer};

    use super::*;

    /// Where the test files are loaded.
    const BASE: u64 = 0x40_0000;

    /// A small ELF file written by `object`'s writer: header, program headers (PT_LOAD of
    /// the whole file at `BASE`, PT_INTERP, PT_DYNAMIC), interpreter, `.dynstr`, section
    /// headers, and the dynamic array last (so that cutting the file cuts only it).
    struct Spec<'a> {
        is_64: bool,
        endian: Endianness,
        e_type: FileType,
        interp: Option<&'a [u8]>,
        rpath: Option<(DynamicTag, &'a [u8])>,
        needed: &'a [&'a [u8]],
        /// Raw entries written after DT_STRTAB, before DT_NULL.
        extra: Vec<(DynamicTag, u64)>,
        /// DT_NULL entries after the first one (linkers pad the array so).
        padding: usize,
        /// Write DT_STRTAB (pointing at `.dynstr`).
        strtab: bool,
        sections: bool,
    }

    impl Default for Spec<'_> {
        fn default() -> Self {
            Spec {
                is_64: true,
                endian: Endianness::Little,
                e_type: ET_DYN,
                interp: None,
                rpath: None,
                needed: &[b"libc.so.6"],
                extra: Vec::new(),
                padding: 0,
                strtab: true,
                sections: true,
            }
        }
    }

    /// A written file and where its parts are.
    struct Built {
        data: Vec<u8>,
        interp_at: Option<usize>,
        rpath_at: Option<usize>,
        dynamic_at: usize,
        dyn_size: usize,
    }

    fn machine(is_64: bool, endian: Endianness) -> Machine {
        match (is_64, endian) {
            (true, Endianness::Little) => EM_X86_64,
            (false, Endianness::Little) => EM_386,
            (true, Endianness::Big) => EM_PPC64,
            (false, Endianness::Big) => EM_PPC,
        }
    }

    fn build(spec: &Spec) -> Built {
        let mut data = Vec::new();
        let mut w = Writer::new(spec.endian, spec.is_64, &mut data);
        w.reserve_file_header();
        w.reserve_program_headers(2 + u32::from(spec.interp.is_some()));
        let interp_at = spec.interp.map(|i| w.reserve(i.len() as u64 + 1, 1));
        let needed: Vec<_> = spec
            .needed
            .iter()
            .map(|n| w.add_dynamic_string(n))
            .collect();
        let rpath = spec.rpath.map(|(tag, s)| (tag, w.add_dynamic_string(s)));
        w.require_dynstr();
        let dynstr_at = w.reserve_dynstr().expect("dynstr");
        if spec.sections {
            w.reserve_null_section_index();
            w.reserve_dynstr_section_index();
            w.reserve_dynamic_section_index();
            w.reserve_shstrtab_section_index();
            w.reserve_shstrtab().expect("shstrtab");
            w.reserve_section_headers();
        }
        let n_dyn = needed.len()
            + usize::from(rpath.is_some())
            + usize::from(spec.strtab)
            + spec.extra.len()
            + 1
            + spec.padding;
        let dynamic_at = w.reserve_dynamic(n_dyn);
        let len = w.reserved_len();

        w.write_file_header(&WFileHeader {
            os_abi: ELFOSABI_NONE,
            abi_version: 0,
            e_type: spec.e_type,
            e_machine: machine(spec.is_64, spec.endian),
            e_entry: 0,
            e_flags: FileFlags(0),
        })
        .expect("file header");
        w.write_align_program_headers();
        let segment = |p_type: ProgramType, offset: u64, size: u64| WProgramHeader {
            p_type,
            p_flags: PF_R,
            p_offset: offset,
            p_vaddr: BASE + offset,
            p_paddr: BASE + offset,
            p_filesz: size,
            p_memsz: size,
            p_align: if p_type == PT_LOAD { 0x1000 } else { 8 },
        };
        w.write_program_header(&segment(PT_LOAD, 0, len));
        if let (Some(at), Some(i)) = (interp_at, spec.interp) {
            w.write_program_header(&segment(PT_INTERP, at, i.len() as u64 + 1));
        }
        let dyn_size = len - dynamic_at;
        w.write_program_header(&segment(PT_DYNAMIC, dynamic_at, dyn_size));
        if let Some(i) = spec.interp {
            w.write(i);
            w.write(&[0]);
        }
        w.write_dynstr();
        if spec.sections {
            w.write_shstrtab();
            w.write_null_section_header();
            w.write_dynstr_section_header(BASE + dynstr_at);
            w.write_dynamic_section_header(BASE + dynamic_at);
            w.write_shstrtab_section_header();
        }
        if spec.sections {
            w.write_align_dynamic();
        } else {
            // (`write_align_dynamic` wants the `.dynamic` section reserved.)
            w.write_align(if spec.is_64 { 8 } else { 4 });
        }
        for id in needed {
            w.write_dynamic_string(DT_NEEDED, id).expect("dyn");
        }
        let rpath_at = rpath.map(|(tag, id)| {
            w.write_dynamic_string(tag, id).expect("dyn");
            (dynstr_at + u64::from(w.dynamic_string_offset(Some(id)))) as usize
        });
        if spec.strtab {
            w.write_dynamic(DT_STRTAB, BASE + dynstr_at).expect("dyn");
        }
        for &(tag, val) in &spec.extra {
            w.write_dynamic(tag, val).expect("dyn");
        }
        for _ in 0..=spec.padding {
            w.write_dynamic(DT_NULL, 0).expect("dyn");
        }
        assert_eq!(w.len(), len);
        Built {
            data,
            interp_at: interp_at.map(|a| a as usize),
            rpath_at,
            dynamic_at: dynamic_at as usize,
            dyn_size: dyn_size as usize,
        }
    }

    const CLASSES: [(bool, Endianness); 4] = [
        (true, Endianness::Little),
        (false, Endianness::Little),
        (true, Endianness::Big),
        (false, Endianness::Big),
    ];

    fn map() -> RelocationMap {
        RelocationMap::from_pairs(
            [
                ("/old/store/pkg-abc".to_string(), "/n/pkg-abc".to_string()),
                ("/old/store".to_string(), "/n".to_string()),
            ],
            "/n",
        )
    }

    fn grow_map() -> RelocationMap {
        RelocationMap::from_pairs(
            [("/old/store".to_string(), "/a/much/longer/root".to_string())],
            "/a/much/longer/root",
        )
    }

    const RPATH: &[u8] = b"/old/store/pkg-abc/lib::/usr/lib:/old/store/dep-xyz/lib64:";
    const INTERP: &[u8] = b"/old/store/glibc/lib/ld-linux.so.2";

    fn full(is_64: bool, endian: Endianness, tag: DynamicTag) -> Spec<'static> {
        Spec {
            is_64,
            endian,
            interp: Some(INTERP),
            rpath: Some((tag, RPATH)),
            needed: &[b"libdep.so", b"libc.so.6"],
            ..Spec::default()
        }
    }

    #[test]
    fn rewrites_rpath_and_interpreter_in_every_class_and_byte_order() {
        for (is_64, endian) in CLASSES {
            for tag in [DT_RPATH, DT_RUNPATH] {
                let built = build(&full(is_64, endian, tag));
                let edits = try_elf_edits(&built.data, &map()).expect("parses");
                let rpath = edits.rpath.as_ref().expect("rpath edit");
                assert_eq!(Some(rpath.offset), built.rpath_at, "{is_64} {endian:?}");
                assert_eq!(rpath.old, RPATH);
                // Per entry, first key in map order; empty entries dropped.
                assert_eq!(rpath.new, b"/n/pkg-abc/lib:/usr/lib:/n/dep-xyz/lib64");
                let interp = edits.interp.as_ref().expect("interp edit");
                assert_eq!(Some(interp.offset), built.interp_at);
                assert_eq!(interp.old, INTERP);
                assert_eq!(interp.new, b"/n/glibc/lib/ld-linux.so.2");
                assert!(edits.fits());

                let mut data = built.data.clone();
                edits.apply(&mut data);
                let at = rpath.offset;
                assert_eq!(&data[at..at + rpath.new.len()], rpath.new.as_slice());
                assert!(data[at + rpath.new.len()..=at + RPATH.len()]
                    .iter()
                    .all(|&b| b == 0));
                assert_eq!(super::rpath(&data).as_deref(), Some(&rpath.new[..]));
                let at = interp.offset;
                assert_eq!(&data[at..at + interp.new.len()], interp.new.as_slice());
                assert!(data[at + interp.new.len()..=at + INTERP.len()]
                    .iter()
                    .all(|&b| b == 0));
                // Nothing else moved.
                let changed = (0..data.len()).filter(|&i| data[i] != built.data[i]);
                assert!(changed
                    .into_iter()
                    .all(|i| (rpath.offset..=rpath.offset + RPATH.len()).contains(&i)
                        || (interp.offset..=interp.offset + INTERP.len()).contains(&i)));
                // Relocated once, there is nothing left to do.
                assert_eq!(elf_edits(&data, &map()), ElfEdits::default());
            }
        }
    }

    #[test]
    fn an_rpath_without_a_matching_entry_is_left_alone() {
        let spec = Spec {
            rpath: Some((DT_RUNPATH, b"::/usr/lib::/opt/other/lib:")),
            ..Spec::default()
        };
        let built = build(&spec);
        assert_eq!(try_elf_edits(&built.data, &map()), Ok(ElfEdits::default()));
        assert_eq!(
            rpath(&built.data).as_deref(),
            Some(&b"::/usr/lib::/opt/other/lib:"[..])
        );
    }

    #[test]
    fn a_longer_string_does_not_fit() {
        let built = build(&full(true, Endianness::Little, DT_RUNPATH));
        let edits = elf_edits(&built.data, &grow_map());
        assert!(!edits.fits());
        let rpath = edits.rpath.expect("rpath edit");
        assert_eq!(
            rpath.new,
            b"/a/much/longer/root/pkg-abc/lib:/usr/lib:/a/much/longer/root/dep-xyz/lib64"
        );
        let interp = edits.interp.expect("interp edit");
        assert!(interp.new.len() > interp.old.len());
    }

    #[test]
    fn only_executables_and_shared_objects_are_read() {
        for (e_type, want) in [(ET_REL, 1), (ET_CORE, 4)] {
            let built = build(&Spec {
                e_type,
                ..full(true, Endianness::Little, DT_RPATH)
            });
            assert_eq!(
                try_elf_edits(&built.data, &map()),
                Err(ElfError::NotLinked(want))
            );
            assert_eq!(elf_edits(&built.data, &map()), ElfEdits::default());
        }
        let exec = build(&Spec {
            e_type: ET_EXEC,
            ..full(false, Endianness::Big, DT_RPATH)
        });
        assert!(elf_edits(&exec.data, &map()).rpath.is_some());
    }

    /// The header of a 64-bit test file, to damage it.
    fn header64(data: &mut [u8]) -> &mut FileHeader64<Endianness> {
        object::pod::from_bytes_mut(data).expect("a whole header").0
    }

    #[test]
    fn non_elf_data_is_skipped() {
        let mut bad_class = build(&Spec::default()).data;
        header64(&mut bad_class).e_ident.class = object::elf::FileClass(3);
        for data in [&b""[..], b"\x7fELF", b"#!/old/store/bin/sh\n", &bad_class] {
            assert_eq!(try_elf_edits(data, &map()), Err(ElfError::NotElf));
            assert_eq!(rpath(data), None);
        }
        // ELF identification, but no whole header or an unknown byte order: Spack's
        // parser fails on it too, and the file is skipped.
        let mut bad_data = build(&Spec::default()).data;
        header64(&mut bad_data).e_ident.data = object::elf::DataEncoding(0);
        for data in [&b"\x7fELF\x02\x01\x01\0/old/store/x\0"[..], &bad_data] {
            assert!(matches!(
                try_elf_edits(data, &map()),
                Err(ElfError::Malformed(_))
            ));
            assert_eq!(elf_edits(data, &map()), ElfEdits::default());
        }
    }

    /// The `Malformed` reason of a file.
    fn reason(data: &[u8]) -> String {
        match try_elf_edits(data, &map()) {
            Err(ElfError::Malformed(r)) => r,
            other => panic!("expected a malformed file, got {other:?}"),
        }
    }

    #[test]
    fn read_as_leniently_as_spack() {
        let edits = |data: &[u8]| try_elf_edits(data, &map()).expect("parses");
        let built = build(&full(true, Endianness::Little, DT_RUNPATH));
        let want = edits(&built.data);
        assert!(want.rpath.is_some() && want.interp.is_some());
        let e = Endianness::Little;
        // Spack ignores EI_VERSION and the entry sizes the header states.
        let mut data = built.data.clone();
        header64(&mut data).e_ident.version = object::elf::FileVersion(0);
        assert_eq!(edits(&data), want);
        let mut data = built.data.clone();
        header64(&mut data).e_phentsize.set(e, 1);
        header64(&mut data).e_shentsize.set(e, 0);
        assert_eq!(edits(&data), want);
        // Section headers after `.dynstr`'s may be missing (or claimed in any number).
        let mut data = built.data.clone();
        header64(&mut data).e_shnum.set(e, 0xfff0);
        assert_eq!(edits(&data), want);
        // ... but not `.dynstr`'s (index 1 here).
        header64(&mut data).e_shnum.set(e, 1);
        assert!(reason(&data).contains("no SHT_STRTAB section"));
    }

    #[test]
    fn several_rpaths_or_string_tables_skip_the_whole_file() {
        for (extra, strtab, want) in [
            (
                vec![(DT_RUNPATH, 1)],
                true,
                "more than one DT_RPATH/DT_RUNPATH",
            ),
            (
                vec![(DT_RPATH, 1)],
                true,
                "more than one DT_RPATH/DT_RUNPATH",
            ),
            (vec![(DT_STRTAB, BASE)], true, "2 DT_STRTAB entries"),
            (vec![], false, "0 DT_STRTAB entries"),
        ] {
            let spec = Spec {
                extra,
                strtab,
                ..full(true, Endianness::Little, DT_RPATH)
            };
            let built = build(&spec);
            assert!(
                reason(&built.data).contains(want),
                "{}",
                reason(&built.data)
            );
            // The interpreter is not relocated either.
            assert_eq!(elf_edits(&built.data, &map()), ElfEdits::default());
        }
    }

    #[test]
    fn string_offsets_out_of_range_skip_the_whole_file() {
        for (tag, val) in [
            (DT_RUNPATH, 0xffff),
            (DT_RUNPATH, 0xffff_ffff),
            (DT_NEEDED, 0x1_0000),
            (DT_SONAME, 0x7fff_ffff),
        ] {
            for (is_64, endian) in CLASSES {
                let spec = Spec {
                    interp: Some(INTERP),
                    extra: vec![(tag, val)],
                    ..Spec {
                        is_64,
                        endian,
                        ..Spec::default()
                    }
                };
                let built = build(&spec);
                let why = reason(&built.data);
                assert!(why.contains("no NUL-terminated string at offset"), "{why}");
                assert!(elf_edits(&built.data, &map()).interp.is_none());
            }
        }
    }

    #[test]
    fn a_string_at_the_end_of_the_table_without_its_nul_is_malformed() {
        let built = build(&Spec {
            rpath: Some((DT_RPATH, b"/old/store/lib")),
            needed: &[],
            ..Spec::default()
        });
        let table_end = built.rpath_at.expect("rpath") + b"/old/store/lib".len() + 1;
        let mut data = built.data.clone();
        data[table_end - 1] = b'x';
        assert!(reason(&data).contains("no NUL-terminated string"));
    }

    #[test]
    fn a_string_table_that_is_no_section_skips_the_file() {
        // With DT_NEEDED (or an rpath) the table must be found: the interpreter stays.
        let built = build(&Spec {
            interp: Some(INTERP),
            sections: false,
            ..Spec::default()
        });
        assert!(reason(&built.data).contains("no SHT_STRTAB section"));
        // With no string to read, the table is not looked for.
        let built = build(&Spec {
            interp: Some(INTERP),
            needed: &[],
            sections: false,
            ..Spec::default()
        });
        let edits = try_elf_edits(&built.data, &map()).expect("parses");
        assert!(edits.interp.is_some() && edits.rpath.is_none());
    }

    #[test]
    fn a_dynamic_array_cut_short_is_read_up_to_its_dt_null() {
        let spec = Spec {
            padding: 4,
            ..full(true, Endianness::Little, DT_RUNPATH)
        };
        let built = build(&spec);
        let entry = 16;
        let first_null = built.dynamic_at + built.dyn_size - 5 * entry;
        // Cut within the padding: Spack reads entry by entry and stops at DT_NULL.
        for cut in [first_null + entry, first_null + entry + 3] {
            let edits = try_elf_edits(&built.data[..cut], &map()).expect("parses");
            assert!(edits.rpath.is_some() && edits.interp.is_some());
        }
        // Cut before the DT_NULL: the file is skipped.
        for cut in [
            first_null + 8,
            first_null,
            built.dynamic_at + 5,
            built.dynamic_at,
        ] {
            let why = reason(&built.data[..cut]);
            assert!(
                why.contains("dynamic array ends before its DT_NULL"),
                "{why}"
            );
            assert_eq!(elf_edits(&built.data[..cut], &map()), ElfEdits::default());
        }
    }

    #[test]
    fn an_unterminated_interpreter_skips_the_file() {
        let built = build(&full(false, Endianness::Little, DT_RPATH));
        let mut data = built.data.clone();
        data[built.interp_at.expect("interp") + INTERP.len()] = b'x';
        assert!(reason(&data).contains("interpreter"));
        assert_eq!(elf_edits(&data, &map()), ElfEdits::default());
    }

    #[test]
    fn vaddr_to_offset_follows_spack() {
        // Sorted by address; the last segment at or below the address is used.
        let loads = [(0x100, 0x1000), (0x9000, 0x2000), (0x20000, 0x30000)];
        assert_eq!(vaddr_to_offset(&loads, 0x1010), 0x110);
        assert_eq!(vaddr_to_offset(&loads, 0x2000), 0x9000);
        assert_eq!(vaddr_to_offset(&loads, 0x40000), 0x30000);
        // Below every segment: Python's `pt_load[-1]`, the last one.
        assert_eq!(vaddr_to_offset(&loads, 0x800), 0x20000 - 0x30000 + 0x800);
        // Exact, never wrapping.
        assert_eq!(
            vaddr_to_offset(&[(u64::MAX, 0)], u64::MAX),
            2 * i128::from(u64::MAX)
        );
    }

    #[test]
    fn damaged_files_never_panic() {
        for (is_64, endian) in CLASSES {
            let built = build(&Spec {
                padding: 1,
                ..full(is_64, endian, DT_RUNPATH)
            });
            let check = |data: &[u8]| {
                let edits = elf_edits(data, &map());
                for e in [&edits.rpath, &edits.interp].into_iter().flatten() {
                    assert!(e.offset + e.old.len() < data.len());
                    assert_eq!(&data[e.offset..e.offset + e.old.len()], e.old.as_slice());
                    assert_eq!(data[e.offset + e.old.len()], 0);
                }
                if edits.fits() {
                    edits.apply(&mut data.to_vec());
                }
                let _ = rpath(data);
            };
            for cut in 0..built.data.len() {
                check(&built.data[..cut]);
            }
            for at in 0..built.data.len() {
                for byte in [0x00, 0x01, 0x7f, 0xff] {
                    let mut data = built.data.clone();
                    data[at] = byte;
                    check(&data);
                }
            }
        }
    }
}
